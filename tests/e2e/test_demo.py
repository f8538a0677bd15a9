"""`voxmesh demo` over the real stack: real speech, heard live, caught up later."""

from __future__ import annotations

from pathlib import Path

import pytest

from voxmesh.demo.conversation_demo import run_demo
from voxmesh.demo.speech_audio import encode_ogg_opus, ogg_duration_s, synthesize
from voxmesh.stack.local_stack import LocalStack

pytestmark = pytest.mark.stack


def test_speech_becomes_playable_ogg_opus_pages() -> None:
    speech = synthesize("Testing one two three.")
    assert 0.5 < speech.seconds < 5
    pages = encode_ogg_opus(speech)
    assert len(pages) > 10  # ~20 ms pages, streamable one by one
    audio = b"".join(p.data for p in pages)
    assert audio.startswith(b"OggS") and b"OpusHead" in audio[:100]
    assert abs(ogg_duration_s(audio) - speech.seconds) < 0.2
    assert [p.media_time_ms for p in pages] == sorted(p.media_time_ms for p in pages)


async def test_demo_conversation_writes_identical_playable_files(
    local_stack: LocalStack, tmp_path: Path
) -> None:
    lines: list[str] = []
    files = await run_demo(local_stack.settings, tmp_path, lines.append)
    transcript = "\n".join(lines)
    assert "DIFFERENT" not in transcript
    assert transcript.count("identical to what was sent") == 4
    assert "carol comes online later" in transcript and "'Talk later!'" in transcript
    assert "carol's phone (offline) got 3 push(es)" in transcript
    assert "Talk later!" in transcript.split("got 3 push(es)")[1]  # the text was pushed too
    assert set(files) == {
        "bob-heard-alice-live.ogg",
        "alice-heard-bob-live.ogg",
        "carol-later-1-alice.ogg",
        "carol-later-2-bob.ogg",
    }
    live = files["bob-heard-alice-live.ogg"].read_bytes()
    assert live == files["carol-later-1-alice.ogg"].read_bytes()
    assert ogg_duration_s(live) > 2
