"""Media the browser tests feed in and check: tone WAVs, a tiny PNG, pitch of decoded audio."""

from __future__ import annotations

import io
import math
import struct
import wave
import zlib
from pathlib import Path

import numpy as np


def tone_wav(path: Path, hz: float, seconds: float, rate: int = 48_000) -> Path:
    """A mono 16-bit sine WAV (Chromium's fake microphone loops the file)."""
    n = int(seconds * rate)
    t = np.arange(n) / rate
    samples = (0.5 * 32767 * np.sin(2 * math.pi * hz * t)).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return path


def tone_pcm(hz: float, seconds: float, rate: int = 24_000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * 32767 * np.sin(2 * math.pi * hz * t)).astype("<i2").tobytes()


def png(width: int = 24, height: int = 16) -> bytes:
    """A small valid RGB PNG (a gradient), written without an imaging library."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    rows = b"".join(
        b"\x00" + bytes(v for x in range(width) for v in (x * 10 % 256, y * 15 % 256, 128))
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def dominant_hz(encoded: bytes) -> float:
    """Decode a WebM/Opus or Ogg/Opus file with PyAV (FFmpeg) and find its loudest frequency."""
    import av

    with av.open(io.BytesIO(encoded), mode="r") as container:
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate or 48_000
        frames = [f.to_ndarray().astype(np.float64) for f in container.decode(stream)]
    samples = np.concatenate([f.reshape(f.shape[0], -1)[0] for f in frames])
    samples = samples[len(samples) // 4 : 3 * len(samples) // 4]  # skip fade-in/out
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate / len(samples))
