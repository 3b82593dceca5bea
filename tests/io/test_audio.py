"""`read_audio`: window length, sample rate, content (sines at known frequencies), channel averaging."""

from __future__ import annotations

import numpy as np
import pytest

from vidlab.io import Reason, VideoReadError, read_audio


def _sine(freq: float, start_s: float, count: int, sample_rate: int, amplitude: float = 0.5) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * freq * (start_s + np.arange(count) / sample_rate))


def test_window_length_rate_and_sample_accurate_content(media):
    # Lossless source at 44.1 kHz, resampled to 16 kHz: matches the analytic sine sample by sample.
    path = media.audio_only("sine440_44k.wav", duration=3.0, sample_rate=44100, freqs=(440.0,))
    for start_s, end_s in [(0.0, 1.0), (1.25, 2.0)]:
        samples = read_audio(path, start_s, end_s, sample_rate=16000)
        assert samples.dtype.is_floating_point and samples.ndim == 1
        assert len(samples) == round((end_s - start_s) * 16000)
        expected = _sine(440.0, start_s, len(samples), 16000)
        assert np.abs(samples.numpy() - expected)[64:-64].max() < 0.01  # edges: resampler filter


def test_other_sample_rate_and_open_end(media):
    path = media.audio_only("sine440_44k.wav", duration=3.0, sample_rate=44100, freqs=(440.0,))
    samples = read_audio(path, 2.5, sample_rate=8000)
    assert len(samples) == 4000
    assert np.abs(samples.numpy() - _sine(440.0, 2.5, 4000, 8000))[64:-64].max() < 0.01


def test_channels_are_averaged(media):
    # Left 440 Hz, right 1000 Hz, each amplitude 0.5: the mean holds both at amplitude 0.25.
    path = media.audio_only("two_tones_16k.wav", duration=1.0, sample_rate=16000, freqs=(440.0, 1000.0))
    samples = read_audio(path, 0.25, 0.75).numpy()
    expected = _sine(440.0, 0.25, 8000, 16000, 0.25) + _sine(1000.0, 0.25, 8000, 16000, 0.25)
    assert np.abs(samples - expected).max() < 1e-3


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("av_aac.mp4", {"codec": "h264", "audio_codec": "aac", "audio_sample_rate": 44100}),
        ("av_opus.webm", {"codec": "vp9", "audio_codec": "libopus", "audio_sample_rate": 48000}),
    ],
)
def test_audio_track_of_a_video(media, name, kwargs):
    path = media.video(name, num_frames=50, fps=25, audio=True, audio_freqs=(440.0,), **kwargs)
    samples = read_audio(path, 0.5, 1.5).numpy()
    assert len(samples) == 16000
    spectrum = np.abs(np.fft.rfft(samples))
    assert np.argmax(spectrum) == 440  # 1-s window: bin k is k Hz
    # Lossy codecs: the waveform still follows the source closely.
    assert np.abs(samples - _sine(440.0, 0.5, 16000, 16000))[64:-64].max() < 0.08


def test_video_without_audio(media):
    with pytest.raises(VideoReadError) as excinfo:
        read_audio(media.video("silent.mp4", num_frames=5))
    assert excinfo.value.reason is Reason.NO_AUDIO_STREAM


@pytest.mark.parametrize("start_s,end_s", [(5.0, None), (-1.0, 0.5), (0.5, 0.5), (0.8, 0.2)])
def test_bad_windows(media, start_s, end_s):
    path = media.audio_only("sine440_44k.wav", duration=3.0, sample_rate=44100, freqs=(440.0,))
    with pytest.raises(VideoReadError) as excinfo:
        read_audio(path, start_s, end_s)
    assert excinfo.value.reason is Reason.OUT_OF_RANGE
