"""Reports as data, rendered to HTML in one place: recipes and experiments say what a page holds (tables,
figures, notes, sections); `render_html` lays it out with one Jinja2 template (`vidlab/templates/report.html.j2`),
escaping every text. Every run report and experiment report goes through it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Union


@dataclass(frozen=True)
class Paragraph:
    kind: ClassVar[str] = "paragraph"
    text: str


@dataclass(frozen=True)
class Preformatted:
    kind: ClassVar[str] = "preformatted"
    text: str


@dataclass(frozen=True)
class Table:
    """Text cells; the first row is the header."""

    kind: ClassVar[str] = "table"
    rows: Sequence[Sequence[str]]


@dataclass(frozen=True)
class Figure:
    """An image file (a path relative to the page) with an optional caption and a second, small line."""

    kind: ClassVar[str] = "figure"
    src: str
    alt: str
    caption: str = ""
    note: str = ""
    width: int | None = None


@dataclass(frozen=True)
class Gallery:
    """Figures side by side, under an optional title (e.g. a query and its top videos)."""

    kind: ClassVar[str] = "gallery"
    figures: Sequence[Figure]
    title: str = ""


@dataclass(frozen=True)
class Section:
    kind: ClassVar[str] = "section"
    title: str
    blocks: Sequence[Block] = ()
    level: int = 2


Block = Union[Paragraph, Preformatted, Table, Figure, Gallery, Section]


@dataclass(frozen=True)
class Report:
    title: str
    blocks: Sequence[Block] = field(default_factory=tuple)


@functools.cache
def _template() -> Any:
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    environment = Environment(
        loader=PackageLoader("vidlab", "templates"), autoescape=select_autoescape(default=True),
        undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    )
    return environment.get_template("report.html.j2")


def render_html(report: Report) -> str:
    """The page of `report` as one HTML document."""
    return _template().render(report=report)


def write_report(report: Report, path: Path) -> Path:
    """Write the page atomically (a temp file beside it, then a rename) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    partial.write_text(render_html(report))
    partial.replace(path)
    return path


__all__ = ["Block", "Figure", "Gallery", "Paragraph", "Preformatted", "Report", "Section", "Table", "render_html", "write_report"]
