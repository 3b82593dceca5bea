"""Exception types shared across vidlab, so callers can catch one family per failure domain."""

from __future__ import annotations


class VidlabError(Exception):
    """Base class of every error vidlab raises on purpose (bad input, bad config, bad file)."""


class ConfigError(VidlabError):
    """A configuration file or a command-line override is invalid."""


def one_line(text: str) -> str:
    """`text` with line breaks and other control characters escaped: a message naming a path or a value read
    from a bad file stays the one line the CLI prints."""
    return text if text.isprintable() else repr(text)[1:-1]


class AnnotationError(VidlabError):
    """An annotation file is malformed: carries the file, the line or entry, and what is wrong."""

    def __init__(self, path: str, where: str | int | None, reason: str):
        self.path = str(path)
        self.where = where
        self.reason = reason
        loc = f"{self.path}:{where}" if where is not None else self.path
        super().__init__(one_line(f"{loc}: {reason}"))
