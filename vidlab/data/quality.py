"""What happens when a sample cannot be read, and the end-of-run account of which files were bad.

Policy `skip` (training default): the dataset substitutes another sample chosen deterministically from
(seed, epoch, index, attempt) and reports the bad file inside the returned sample (`BAD_SAMPLES_KEY`),
because DataLoader workers are separate processes whose counters the main process never sees. The main
process feeds every batch to one `BadSampleTracker`, which logs each bad file once, raises when the bad
fraction passes a threshold (a broken mount should stop a run, not silently train on 3 files) and prints
the summary at the end. Policy `raise` (evaluation default): the first bad sample stops the run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from vidlab.data.mixing import set_epoch
from vidlab.errors import ConfigError, VidlabError
from vidlab.io import VideoReadError, probe, read_frames
from vidlab.io.container import check_file
from vidlab.io.sampling import SamplingError

log = logging.getLogger(__name__)

# The key of a sample (and of a collated batch) that lists the bad files met while producing it.
BAD_SAMPLES_KEY = "bad_samples"
# Failures that make a sample bad: the media cannot serve it. Anything else is a bug and propagates.
BAD_SAMPLE_ERRORS = (VideoReadError, SamplingError)


class BadSamplePolicy(str, Enum):
    SKIP = "skip"
    RAISE = "raise"

    @classmethod
    def parse(cls, value: str | BadSamplePolicy) -> BadSamplePolicy:
        try:
            return cls(value)
        except ValueError:
            raise ConfigError(f"bad-sample policy must be 'skip' or 'raise', got {value!r}") from None


@dataclass(frozen=True)
class BadSample:
    """A file that could not serve a sample, and why (one line)."""

    path: str
    reason: str

    @classmethod
    def from_error(cls, path: str, error: VidlabError) -> BadSample:
        """`path` names the sample's source as the dataset knows it (a file, or a shard and key)."""
        if isinstance(error, VideoReadError):
            return cls(path, error.reason.value + (f" ({error.detail})" if error.detail else ""))
        return cls(path, str(error))


class BadSampleError(VidlabError):
    """A sample could not be read under the `raise` policy, or too many could under `skip`.

    It takes one message so that it survives a DataLoader worker: the loader re-raises worker errors as
    `type(text_of_the_traceback)`, and this keeps only the last line of that text, the original message.
    """

    def __init__(self, message: str):
        if message.startswith("Caught ") and "Traceback" in message:
            last = message.rstrip().splitlines()[-1]
            message = last.split(": ", 1)[1] if ": " in last else last
        super().__init__(message)


def check_media(path: str, kind: str = "video", decode: bool = True) -> str | None:
    """Why `path` cannot serve samples (None if it can): it must exist and, with `decode`, have
    decodable first and last frames. The reason is the same one-liner datasets report."""
    try:
        check_file(path)
        if decode:
            last = 0 if kind == "image" else probe(path).num_frames - 1
            read_frames(path, np.unique([0, max(last, 0)]))
    except BAD_SAMPLE_ERRORS as e:
        return BadSample.from_error(path, e).reason
    return None


class BadSampleTracker:
    """Main-process account of bad samples across all workers; feed it every batch (or use `wrap`)."""

    def __init__(self, max_bad_fraction: float = 0.05, min_samples: int = 100):
        if not 0.0 <= max_bad_fraction <= 1.0:
            raise ConfigError(f"max_bad_fraction must be within [0, 1], got {max_bad_fraction}")
        self.max_bad_fraction = max_bad_fraction
        self.min_samples = min_samples
        self.delivered = 0
        self.bad = 0
        self.files: dict[str, list] = {}  # path -> [first reason, count]

    @property
    def attempts(self) -> int:
        return self.delivered + self.bad

    @property
    def bad_fraction(self) -> float:
        return self.bad / self.attempts if self.attempts else 0.0

    def record(self, delivered: int, bad: Iterable[BadSample]) -> None:
        """Count `delivered` good samples and the bad ones met while producing them; check the threshold."""
        self.delivered += delivered
        for sample in bad:
            self.bad += 1
            if sample.path in self.files:
                self.files[sample.path][1] += 1
            else:
                self.files[sample.path] = [sample.reason, 1]
                log.warning("bad sample skipped: %s: %s", sample.path, sample.reason)
        if self.attempts >= self.min_samples and self.bad_fraction > self.max_bad_fraction:
            raise BadSampleError(
                f"{self.bad_fraction:.1%} of samples were bad (limit {self.max_bad_fraction:.1%}); " + self.summary().replace("\n", "; ")
            )

    def update(self, batch: dict[str, Any]) -> None:
        """Account for one collated batch (its `index` entries are the delivered samples)."""
        self.record(len(batch["index"]), batch.get(BAD_SAMPLES_KEY, ()))

    def wrap(self, loader: Iterable) -> TrackedLoader:
        return TrackedLoader(loader, self)

    def summary(self) -> str:
        """Counts, then one line per bad file with its first reason, most frequent first."""
        head = f"bad samples: {self.bad} of {self.attempts} reads ({self.bad_fraction:.1%}) from {len(self.files)} files"
        rows = sorted(self.files.items(), key=lambda item: (-item[1][1], item[0]))
        return "\n".join([head] + [f"  {path}: {reason} (x{count})" for path, (reason, count) in rows])


class TrackedLoader:
    """A loader whose batches pass through a `BadSampleTracker`; keeps `len` and `set_epoch` for mixing."""

    def __init__(self, loader: Iterable, tracker: BadSampleTracker):
        self.loader = loader
        self.tracker = tracker

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        set_epoch(self.loader, epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.loader:
            self.tracker.update(batch)
            yield batch
