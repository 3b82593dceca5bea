"""The soundtrack of a scene: a steady tone per object whose pitch names its shape, plus a sound at
each event (a click at every wall contact, a blip at every colour change), placed at the event's
presentation time so audio-visual correspondence and time-shift detection are learnable."""

from __future__ import annotations

import numpy as np

from vidlab.data.shapesbench.scene import SHAPES, Scene

SAMPLE_RATE = 16000
# One pitch per shape (Hz), a musical third or more apart, all below the click band.
SHAPE_PITCH_HZ: dict[str, float] = dict(zip(SHAPES, (262.0, 330.0, 392.0, 494.0, 587.0, 698.0)))
TONE_LEVEL = (0.15, 0.07)  # primary, secondary
CLICK_S = 0.008
CLICK_LEVEL = 0.6
BLIP_S = 0.03
BLIP_HZ = 1500.0
BLIP_LEVEL = 0.35
FADE_S = 0.01


def num_samples(scene: Scene, sample_rate: int = SAMPLE_RATE) -> int:
    return round(scene.duration_s * sample_rate)


def render_audio(scene: Scene, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mono float32 waveform in [-1, 1], as long as the video (num_frames / fps seconds)."""
    n = num_samples(scene, sample_rate)
    t = np.arange(n, dtype=np.float64) / sample_rate
    wave = np.zeros(n, dtype=np.float64)
    for obj, level in zip(scene.objects, TONE_LEVEL):
        wave += level * np.sin(2 * np.pi * SHAPE_PITCH_HZ[obj.shape] * t)
    fade = min(int(FADE_S * sample_rate), n // 2)
    if fade:
        ramp = np.linspace(0.0, 1.0, fade)
        wave[:fade] *= ramp
        wave[n - fade:] *= ramp[::-1]
    rng = np.random.default_rng(scene.audio_seed)
    for event in scene.events():
        start = round(event["time_s"] * sample_rate)
        if event["kind"] == "bounce":
            length = int(CLICK_S * sample_rate)
            burst = rng.uniform(-1.0, 1.0, length) * np.exp(-np.arange(length) / (0.25 * length))
            _add(wave, start, CLICK_LEVEL * burst)
        else:
            length = int(BLIP_S * sample_rate)
            envelope = np.hanning(length)
            blip = BLIP_LEVEL * envelope * np.sin(2 * np.pi * BLIP_HZ * np.arange(length) / sample_rate)
            _add(wave, start - length // 2, blip)  # centred on the change, as the eye sees it
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


def _add(wave: np.ndarray, start: int, sound: np.ndarray) -> None:
    skip = max(0, -start)
    end = min(len(wave), start + len(sound))
    if start + skip < end:
        wave[start + skip:end] += sound[skip: end - start]
