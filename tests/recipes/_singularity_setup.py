"""A tiny Singularity setup on ShapesBench tiny: a 2-layer, 32-wide BERT (layer 1 fuses) whose vocabulary
holds every word of the captions, options, questions and answers, and configs small enough for a few CPU
steps per test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from _text_setup import make_text_folder as make_shared_text_folder


def make_text_folder(shapes_root: Path, out: Path, dropout: float = 0.1) -> Path:
    """The 2-layer BERT of this setup (layer 1 fuses), its vocabulary holding the QA words too."""
    return make_shared_text_folder(shapes_root, out, layers=2, dropout=dropout, qa=True)


def tiny_config(shapes_root: Path, text_folder: Path, output_dir: Path, task: str = "retrieval") -> dict[str, Any]:
    """Two 8-clip steps of one epoch with 1-frame 32-px clips, 4 test frames; a 1-layer BEiT."""
    test = {"qa": "annotations/qa_test.json", "mc": "annotations/mc_test.json"}.get(task, "annotations/captions_test.json")
    train = "annotations/qa_train.json" if task == "qa" else "annotations/captions_train.json"
    return {
        "recipe": "singularity",
        "task": task,
        "name": f"tiny_{task}",
        "seed": 0,
        "output_dir": str(output_dir),
        "model": {
            "base": "singularity-tiny",
            "vision": {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
            "text": {"fusion_layer": 1, "max_length": 24},
            "embed_dim": 16,
            "qa": {"decoder_layers": 1, "max_question_length": 16},
        },
        "text": {"tokenizer": str(text_folder), "weights": str(text_folder)},
        "data": {
            "root": str(shapes_root),
            "train": [{"name": "videos", "annotations": train, "batch_size": 8}],
            "test": {"annotations": test},
            "answer_list": "annotations/qa_answer_list.json",
            "num_frames": 1,
            "num_frames_test": 4,
            "transform": {"preset": "singularity", "size": 32, "hflip": 0.0},
            "num_workers": 0,
            "steps_per_epoch": 2,
        },
        "trainer": {"accelerator": "cpu", "max_epochs": 1, "log_every_n_steps": 1},
        "optim": {"lr": 1.0e-3, "weight_decay": 0.02},
        "checkpoint": {"every_n_steps": 2, "keep": -1},
        "logging": {"tensorboard": False, "progress_bar": False},
        "eval": {"after_train": True, "batch_size": 8},
    }
