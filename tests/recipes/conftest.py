"""Session fixtures of the recipe tests: ShapesBench tiny and a tiny text tower made from its captions."""

from __future__ import annotations

from pathlib import Path

import pytest
from _text_setup import make_text_folder


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vidlab.data.shapesbench import generate

    return generate(tmp_path_factory.mktemp("shapesbench") / "tiny", "tiny", seed=0, num_workers=2, progress=False)


@pytest.fixture(scope="session")
def text_folder(shapes_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """With dropout, so that resuming must restore the random state to be exact."""
    return make_text_folder(shapes_root, tmp_path_factory.mktemp("text") / "bert-tiny", dropout=0.1)


@pytest.fixture(scope="session")
def text_folder_no_dropout(shapes_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Without dropout: processes draw different masks for their slices of a batch."""
    return make_text_folder(shapes_root, tmp_path_factory.mktemp("text") / "bert-tiny-nodrop", dropout=0.0)
