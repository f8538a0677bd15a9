"""Real speech for the demo: eSpeak NG (the library ships in the espeakng-loader wheel) to
16-bit PCM, then Opus in Ogg with PyAV (FFmpeg's libopus), page by page, as a native client
would stream it: each ~20 ms Ogg page is one chunk, and the pages concatenated are the file.
"""

from __future__ import annotations

import array
import ctypes
import io
import threading
from dataclasses import dataclass
from typing import Any

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_lock = threading.Lock()  # eSpeak NG is a process-wide singleton


@dataclass(frozen=True)
class Speech:
    pcm: bytes  # signed 16-bit little-endian mono
    sample_rate: int

    @property
    def seconds(self) -> float:
        return len(self.pcm) / 2 / self.sample_rate


@dataclass(frozen=True)
class OggPage:
    data: bytes
    media_time_ms: int


_CALLBACK_TYPE = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)
_samples = array.array("h")  # the current synthesis (under _lock)
_engine: dict[str, Any] = {}  # eSpeak NG, initialised once per process


def _on_samples(wav: Any, count: int, events: Any) -> int:
    if count > 0:
        _samples.extend(wav[:count])
    return 0


# Module-level, so eSpeak never calls back into a collected ctypes function.
_CALLBACK = _CALLBACK_TYPE(_on_samples)


def _espeak() -> tuple[Any, int]:
    """The library and its sample rate. eSpeak NG keeps process-wide state: it is
    initialised once (initialising it again in one process crashed it now and then)."""
    if not _engine:
        import espeakng_loader

        lib: Any = ctypes.cdll.LoadLibrary(str(espeakng_loader.get_library_path()))
        rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, str(espeakng_loader.get_data_path()).encode(), 0
        )
        if rate <= 0:
            raise RuntimeError("eSpeak NG failed to initialise")
        lib.espeak_SetSynthCallback(_CALLBACK)
        _engine.update(lib=lib, rate=rate)
    return _engine["lib"], int(_engine["rate"])


def synthesize(text: str, voice: str = "en") -> Speech:
    with _lock:
        lib, rate = _espeak()
        del _samples[:]
        lib.espeak_SetVoiceByName(voice.encode())
        encoded = text.encode()
        if lib.espeak_Synth(encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, 0, None, None) != 0:
            raise RuntimeError("eSpeak NG could not synthesise the text")
        lib.espeak_Synchronize()
        return Speech(_samples.tobytes(), rate)


class _Pages(io.RawIOBase):
    """Collects what the Ogg muxer writes; with page_duration set, each write is a page."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.writes.append(bytes(data))
        return len(data)


def encode_ogg_opus(speech: Speech, bit_rate: int = 32_000, page_ms: int = 20) -> list[OggPage]:
    import av

    sink = _Pages()
    container: Any = av.open(
        sink, "w", format="ogg", options={"page_duration": str(page_ms * 1000)}
    )
    stream: Any = container.add_stream("libopus", rate=48_000, layout="mono")
    stream.bit_rate = bit_rate
    resampler = av.AudioResampler(format="s16", layout="mono", rate=48_000)
    frame = av.AudioFrame(format="s16", layout="mono", samples=len(speech.pcm) // 2)
    frame.planes[0].update(speech.pcm)
    frame.sample_rate = speech.sample_rate
    for resampled in [*resampler.resample(frame), *resampler.resample(None)]:
        for packet in stream.encode(resampled):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)
    container.close()
    pages = [w for w in sink.writes if w]
    step = speech.seconds * 1000 / max(len(pages), 1)
    return [OggPage(data, int(i * step)) for i, data in enumerate(pages)]


def ogg_duration_s(data: bytes) -> float:
    """Duration of an Ogg/Opus file, read back with FFmpeg (proves the file is playable)."""
    import av

    container: Any = av.open(io.BytesIO(data), "r")
    with container:
        return float(container.duration or 0) / 1_000_000
