"""Rasterise a scene into RGB frames: a static background with anti-aliased shapes composited on top."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
from PIL import Image, ImageDraw

from vidlab.data.shapesbench.scene import (
    BACKGROUND_KINDS,
    COLORS,
    Background,
    Scene,
    ShapeObject,
    ShapesBenchError,
    unit_polygon,
)

SUPERSAMPLE = 4  # shapes are drawn at 4x and box-filtered down: smooth edges, sub-pixel motion stays visible
NOISE_GRID = 6  # value-noise control points per side of a textured background


def render_background(background: Background, width: int, height: int) -> np.ndarray:
    """The backdrop as float32 (H, W, 3) in [0, 255]."""
    first = np.asarray(background.colors[0], dtype=np.float32)
    if background.kind == "flat":
        return np.broadcast_to(first, (height, width, 3)).copy()
    second = np.asarray(background.colors[1], dtype=np.float32)
    if background.kind == "gradient":
        theta = np.deg2rad(background.angle_deg)
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        along = xs * np.cos(theta) + ys * np.sin(theta)
        weight = (along - along.min()) / max(float(along.max() - along.min()), 1e-6)
    elif background.kind == "noise":
        rng = np.random.default_rng(background.noise_seed)
        grid = rng.random((NOISE_GRID, NOISE_GRID)).astype(np.float32)
        smooth = Image.fromarray(grid, mode="F").resize((width, height), Image.Resampling.BICUBIC)
        grain = rng.normal(0.0, 0.06, size=(height, width)).astype(np.float32)
        weight = np.clip(np.asarray(smooth) + grain, 0.0, 1.0)
    else:
        raise ShapesBenchError(f"unknown background kind {background.kind!r}; expected one of {BACKGROUND_KINDS}")
    return first + (second - first) * weight[..., None]


def object_coverage(obj: ShapeObject, u: float | Fraction, width: int, height: int) -> tuple[np.ndarray, int, int]:
    """Coverage in [0, 1] of one object at normalised time u over its bounding box: (patch, x0, y0),
    the patch covering frame pixels [y0, y0 + h) x [x0, x0 + w)."""
    cx, cy = obj.position(u)
    vertices = unit_polygon(obj.shape, obj.angle_at(u)) * (obj.size_at(u) / 2) + (cx, cy)
    x0, y0 = (max(0, int(np.floor(v)) - 1) for v in vertices.min(axis=0))
    x1 = min(width, int(np.ceil(vertices[:, 0].max())) + 1)
    y1 = min(height, int(np.ceil(vertices[:, 1].max())) + 1)
    # Pixel i spans [i, i+1) in frame coordinates; PIL fills sub-pixels by their integer coordinate.
    points = [((x - x0) * SUPERSAMPLE - 0.5, (y - y0) * SUPERSAMPLE - 0.5) for x, y in vertices.tolist()]
    mask = Image.new("L", ((x1 - x0) * SUPERSAMPLE, (y1 - y0) * SUPERSAMPLE), 0)
    ImageDraw.Draw(mask).polygon(points, fill=255)
    return np.asarray(mask.reduce(SUPERSAMPLE), dtype=np.float32) / 255.0, x0, y0


def render_frame(scene: Scene, k: int, background: np.ndarray | None = None) -> np.ndarray:
    """Frame k as uint8 (H, W, 3); pass the rendered background when drawing many frames."""
    canvas = render_background(scene.background, scene.width, scene.height) if background is None else background.copy()
    u = scene.frame_u(k)
    for obj in reversed(scene.objects):  # the primary last, on top
        alpha, x0, y0 = object_coverage(obj, u, scene.width, scene.height)
        region = canvas[y0 : y0 + alpha.shape[0], x0 : x0 + alpha.shape[1]]
        color = np.asarray(COLORS[obj.color_at(u)], dtype=np.float32)
        region[:] = region * (1.0 - alpha[..., None]) + color * alpha[..., None]
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def render_frames(scene: Scene) -> np.ndarray:
    """All frames of a scene as uint8 (T, H, W, 3)."""
    background = render_background(scene.background, scene.width, scene.height)
    return np.stack([render_frame(scene, k, background) for k in range(scene.num_frames)])
