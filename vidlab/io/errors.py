"""The one exception type of the video input pipeline."""

from __future__ import annotations

from enum import Enum

from vidlab.errors import VidlabError, one_line


class Reason(str, Enum):
    MISSING = "missing"
    EMPTY = "empty"
    NOT_A_VIDEO = "not a video"
    CORRUPT = "corrupt"
    NO_VIDEO_STREAM = "no video stream"
    NO_AUDIO_STREAM = "no audio stream"
    OUT_OF_RANGE = "out of range"


class VideoReadError(VidlabError):
    """A media file could not serve a request; `path` and `reason` say which file and why."""

    def __init__(self, path: str, reason: Reason, detail: str = ""):
        self.path = str(path)
        self.reason = Reason(reason)
        self.detail = detail
        msg = f"{self.path}: {self.reason.value}"
        super().__init__(one_line(f"{msg} ({detail})" if detail else msg))

    def __reduce__(self):  # picklable across DataLoader worker processes
        return (type(self), (self.path, self.reason, self.detail))
