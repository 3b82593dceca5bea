"""The GDT / STiCA audio front end: log mel-filterbank spectrograms as the official get_spec computes them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vidlab.data.audio import GDT_ZNORM_MEAN, GDT_ZNORM_STD, gdt_spectrogram, log_filterbank, mel_filterbank
from vidlab.errors import ConfigError

RATE = 24000


def tone(seconds: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return np.round(8000 * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def test_one_second_gives_99_frames_and_the_window_moves_back_at_the_end():
    wav = tone(2.5)
    spec = gdt_spectrogram(wav, 0.25, num_filters=40)
    assert spec.shape == (1, 40, 99) and spec.dtype == torch.float32
    clamped = gdt_spectrogram(wav, 2.0, num_filters=40)  # 2.0 + 1 s > 2.5 s: the last second instead
    torch.testing.assert_close(clamped, gdt_spectrogram(wav, 1.5, num_filters=40))
    with pytest.raises(ConfigError, match="shorter than the 1 s window"):
        gdt_spectrogram(wav[: RATE // 2], 0.0)


def test_longer_clips_are_zero_padded_for_any_filter_count_and_z_normalised():
    wav = tone(2.5)
    for filters in (40, 257):  # the official code pads into a 257-row buffer and fails for 40 filters
        spec = gdt_spectrogram(wav, 0.0, num_sec=2, num_filters=filters)
        assert spec.shape == (1, filters, 199)
    raw = gdt_spectrogram(wav, 0.0, num_filters=40)
    torch.testing.assert_close(gdt_spectrogram(wav, 0.0, num_filters=40, z_normalize=True), (raw - GDT_ZNORM_MEAN) / GDT_ZNORM_STD)


def test_gain_shifts_the_log_energies_and_empty_filters_stay_at_log_eps():
    wav = tone(1.0)
    spec = gdt_spectrogram(wav, 0.0, num_filters=257)
    louder = gdt_spectrogram(wav, 0.0, num_filters=257, gain=2.0)
    empty = torch.from_numpy(mel_filterbank(257, 1024, RATE).sum(axis=1) == 0)
    assert 0 < int(empty.sum()) < 257
    assert torch.all(spec[0, empty] == math.log(np.finfo(float).eps))
    torch.testing.assert_close(louder[0, ~empty], spec[0, ~empty] + 2 * math.log(2.0), atol=1e-4, rtol=0)


def test_filterbank_peaks_at_the_tone():
    energies = log_filterbank(tone(0.5, hz=1000.0), RATE, win_s=0.02, step_s=0.01, num_filters=40, nfft=1024)
    centres = 700 * (10 ** (np.linspace(0, 2595 * np.log10(1 + 12000 / 700), 42)[1:-1] / 2595) - 1)
    assert abs(centres[energies.mean(axis=0).argmax()] - 1000.0) < 200


def test_spec_augment_masks_one_band_and_one_span_of_the_preset_widths():
    from vidlab.data.audio import SPEC_AUGMENT, spec_augment

    spec = torch.rand(1, 40, 99) + 1.0  # no zero before masking
    widths_f, widths_t = set(), set()
    for seed in range(200):
        out = spec_augment(spec, "medium", np.random.default_rng(seed))
        zero = out == 0
        rows, cols = zero.all(-1)[0], zero.all(-2)[0]
        widths_f.add(int(rows.sum()))
        widths_t.add(int(cols.sum()))
        # everything else untouched, and the input kept
        torch.testing.assert_close(out[~zero], spec[~zero])
        assert bool((zero == (rows[None, :, None] | cols[None, None, :])).all())
        for mask in (rows, cols):  # one contiguous band each
            idx = torch.nonzero(mask).flatten()
            assert len(idx) == 0 or int(idx[-1] - idx[0]) + 1 == len(idx)
    assert (spec > 0).all()
    assert widths_f == {0, 1, 2} and widths_t == {0, 1, 2, 3, 4, 5}  # int(U(0, F)) with F, T = 3, 6 (medium)
    assert SPEC_AUGMENT["medium"] == (1, 1, 3, 6)
    with pytest.raises(ConfigError, match="SpecAugment preset must be one of"):
        spec_augment(spec, "loud", np.random.default_rng(0))
