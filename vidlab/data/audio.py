"""Audio front ends: the log mel-filterbank spectrogram GDT and STiCA feed their audio networks.

`log_filterbank` is `python_speech_features.logfbank` (0.6) in numpy: pre-emphasis 0.97, frames of
`round_half_up(winlen * rate)` samples every `round_half_up(winstep * rate)` (the last frame zero-padded),
a rectangular window, the power spectrum `|rfft(frame, nfft)|^2 / nfft`, triangular mel filters with edges
on FFT bins `floor((nfft + 1) * hz / rate)`, and `log` with exact zeros replaced by `eps` first. Filters whose
edges fall on one bin (many of the 257 with nfft 1024) cover no bin and stay at `log(eps)` = -36.04.

`gdt_spectrogram` is the official `get_spec`: a `num_sec` window from `start_s` (moved back to end at the
waveform's end when it would run past it), 20 ms windows every 10 ms, 40 filters (GDT) or 257 (STiCA and
evaluation), `(1, filters, frames)` float32, zero-padded to `100 * num_sec - 1` frames for clips longer than a
second, optionally z-normalised with the official constants. Samples are in 16-bit PCM units (what the
official code reads from FFmpeg as int16; `vidlab.io.read_audio`'s float samples times 32768): the log
energies depend on that scale.

`spec_augment` is the official SpecAugment (`spec_augment_pytorch.py`, time warping commented out there too):
`freq_masks` bands of `int(U(0, F))` filters and `time_masks` spans of `int(U(0, T))` frames set to 0, each at
a uniform offset, after the z-norm; presets `SPEC_AUGMENT` (`--audio_augtype`; GDT pretraining: medium).
Volume jitter is `gdt_spectrogram`'s `gain` (official: U(0.9, 1.1) on the waveform).
"""

from __future__ import annotations

import decimal
import math

import numpy as np
import torch
from numpy.typing import ArrayLike

from vidlab.errors import ConfigError

PCM16_SCALE = 32768.0  # float samples in [-1, 1) -> 16-bit PCM units
GDT_ZNORM_MEAN, GDT_ZNORM_STD = 1.93, 17.89  # get_spec's z_normalize constants
GDT_FILTERS = {"gdt": 40, "stica": 257}  # aud_spec_type 1 / 2


# [freq_masks, time_masks, F, T] of the official --audio_augtype presets
SPEC_AUGMENT: dict[str, tuple[int, int, int, int]] = {"mild": (1, 1, 2, 5), "medium": (1, 1, 3, 6), "heavy": (2, 2, 3, 6)}


def _round_half_up(value: float) -> int:
    return int(decimal.Decimal(value).quantize(decimal.Decimal("1"), rounding=decimal.ROUND_HALF_UP))


def _hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    return 2595 * np.log10(1 + np.asarray(hz) / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700 * (10 ** (mel / 2595.0) - 1)


def mel_filterbank(num_filters: int, nfft: int, sample_rate: int, low_hz: float = 0.0, high_hz: float | None = None) -> np.ndarray:
    """(num_filters, nfft // 2 + 1) triangular filters, python_speech_features' `get_filterbanks`."""
    high_hz = sample_rate / 2 if high_hz is None else high_hz
    edges = np.floor((nfft + 1) * _mel_to_hz(np.linspace(_hz_to_mel(low_hz), _hz_to_mel(high_hz), num_filters + 2)) / sample_rate)
    bins = np.arange(nfft // 2 + 1)
    bank = np.zeros((num_filters, nfft // 2 + 1))
    for j in range(num_filters):
        left, centre, right = edges[j], edges[j + 1], edges[j + 2]
        rising = (bins >= left) & (bins < centre)
        falling = (bins >= centre) & (bins < right)
        bank[j, rising] = (bins[rising] - left) / (centre - left)
        bank[j, falling] = (right - bins[falling]) / (right - centre)
    return bank


def log_filterbank(
    samples: ArrayLike,
    sample_rate: int,
    win_s: float = 0.025,
    step_s: float = 0.01,
    num_filters: int = 26,
    nfft: int = 512,
    preemphasis: float = 0.97,
) -> np.ndarray:
    """(frames, num_filters) float64 log mel-filterbank energies of 1-D `samples`."""
    signal = np.asarray(samples, dtype=np.float64)
    if signal.ndim != 1 or signal.size == 0:
        raise ConfigError(f"log_filterbank needs a non-empty 1-D waveform, got shape {signal.shape}")
    signal = np.append(signal[0], signal[1:] - preemphasis * signal[:-1])
    frame_len, frame_step = _round_half_up(win_s * sample_rate), _round_half_up(step_s * sample_rate)
    num_frames = 1 if signal.size <= frame_len else 1 + math.ceil((signal.size - frame_len) / frame_step)
    padded = np.concatenate([signal, np.zeros((num_frames - 1) * frame_step + frame_len - signal.size)])
    frames = np.lib.stride_tricks.sliding_window_view(padded, frame_len)[::frame_step]
    power = np.square(np.abs(np.fft.rfft(frames, nfft))) / nfft
    energies = power @ mel_filterbank(num_filters, nfft, sample_rate).T
    return np.log(np.where(energies == 0, np.finfo(float).eps, energies))


def gdt_spectrogram(
    samples: ArrayLike,
    start_s: float,
    num_sec: int = 1,
    sample_rate: int = 24000,
    num_filters: int = 40,
    z_normalize: bool = False,
    gain: float = 1.0,
) -> torch.Tensor:
    """(1, num_filters, 100 * num_sec - 1) spectrogram of `num_sec` seconds from `start_s` (official `get_spec`).

    `samples`: mono waveform in 16-bit PCM units; `gain`: the volume jitter factor (official: U(0.9, 1.1)).
    """
    wav = np.asarray(samples)
    begin = int(np.round(start_s * sample_rate))
    end = int(np.round(start_s * sample_rate) + sample_rate * num_sec)
    if end > len(wav):
        begin, end = len(wav) - sample_rate * num_sec, len(wav)
    if begin < 0:
        raise ConfigError(f"the waveform lasts {len(wav) / sample_rate:.3g} s, shorter than the {num_sec} s window")
    window = wav[begin:end] * gain if gain != 1.0 else wav[begin:end]
    spec = log_filterbank(window, sample_rate, win_s=0.02, step_s=0.01, num_filters=num_filters, nfft=1024)
    spec = spec.astype(np.float32).T[None]
    if num_sec > 1:
        full = np.zeros((1, num_filters, 100 * num_sec - 1), dtype=np.float32)
        full[:, :, : spec.shape[2]] = spec
        spec = full
    out = torch.as_tensor(spec)
    return (out - GDT_ZNORM_MEAN) / GDT_ZNORM_STD if z_normalize else out


def spec_augment(spec: torch.Tensor, preset: str | tuple[int, int, int, int], rng: np.random.Generator) -> torch.Tensor:
    """A copy of (..., F, T) `spec` with SpecAugment's frequency then time masks (zeros), drawn from `rng`."""
    if isinstance(preset, str):
        if preset not in SPEC_AUGMENT:
            raise ConfigError(f"SpecAugment preset must be one of {', '.join(SPEC_AUGMENT)}, got {preset!r}")
        preset = SPEC_AUGMENT[preset]
    freq_masks, time_masks, max_f, max_t = preset
    out = spec.clone()
    num_filters, num_frames = out.shape[-2:]
    for _ in range(freq_masks):
        width = int(rng.uniform(0.0, max_f))
        start = int(rng.integers(0, num_filters - width + 1))
        out[..., start : start + width, :] = 0
    for _ in range(time_masks):
        width = int(rng.uniform(0.0, max_t))
        start = int(rng.integers(0, num_frames - width + 1))
        out[..., start : start + width] = 0
    return out


__all__ = [
    "GDT_FILTERS",
    "PCM16_SCALE",
    "SPEC_AUGMENT",
    "gdt_spectrogram",
    "log_filterbank",
    "mel_filterbank",
    "spec_augment",
]
