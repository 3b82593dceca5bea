"""ShapesBench: a procedural video-text corpus (real H.264 clips with audio, captions, labels, QA and
multiple choice) whose temporal tasks cannot be solved from a single frame. See docs/shapesbench.md."""

from vidlab.data.shapesbench.annotations import read_metadata
from vidlab.data.shapesbench.generate import PRESETS, Preset, generate, read_manifest
from vidlab.data.shapesbench.scene import (
    APPEARANCE_CLASSES,
    LABEL_TASKS,
    MOTION_CLASSES,
    OPPOSITE,
    PROGRAMS,
    SHAPES,
    Scene,
    SceneSpec,
    ShapesBenchError,
    sample_scene,
    scene_labels,
)

__all__ = [
    "APPEARANCE_CLASSES",
    "LABEL_TASKS",
    "MOTION_CLASSES",
    "OPPOSITE",
    "PRESETS",
    "PROGRAMS",
    "SHAPES",
    "Preset",
    "Scene",
    "SceneSpec",
    "ShapesBenchError",
    "generate",
    "read_manifest",
    "read_metadata",
    "sample_scene",
    "scene_labels",
]
