"""A 440 Hz tone as Opus packets and a way to measure the pitch of decoded audio."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np

RATE = 48_000


def tone_pcm(seconds: float, frequency: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.5 * np.sin(2 * np.pi * frequency * t) * 32767).astype(np.int16)


def opus_packets(seconds: float, frequency: float = 440.0) -> list[bytes]:
    """20 ms Opus packets of a mono tone (FFmpeg's libopus, as a browser encodes)."""
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = RATE
    codec.layout = "mono"
    codec.format = "s16"
    codec.time_base = Fraction(1, RATE)
    codec.options = {"frame_duration": "20"}
    pcm = tone_pcm(seconds, frequency)
    packets: list[bytes] = []
    for start in range(0, len(pcm) - 959, 960):
        frame = av.AudioFrame.from_ndarray(pcm[start : start + 960].reshape(1, -1), "s16", "mono")
        frame.sample_rate = RATE
        frame.pts = start
        packets += [bytes(p) for p in codec.encode(frame)]
    packets += [bytes(p) for p in codec.encode(None)]
    return packets


def decode(data: bytes) -> tuple[np.ndarray, int]:
    """Decode a media file to mono float samples and their rate."""
    with av.open(io.BytesIO(data), "r") as container:
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE)
        parts = []
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                parts.append(out.to_ndarray().reshape(-1))
    return (np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)), RATE


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    if len(samples) < 1024:
        return 0.0
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])
