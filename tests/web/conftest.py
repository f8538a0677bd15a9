"""Real Chromium (Debian's `chromium`, driven by Playwright; never a downloaded browser)."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.web.media_files import tone_wav

REPO = Path(__file__).resolve().parents[2]
DIST = REPO / "gateway" / "web" / "dist" / "index.html"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Offline-safe flags (no background networking, no component updates) and a fake microphone.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-features=MediaRouter,OptimizationHints",
    "--autoplay-policy=no-user-gesture-required",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]


def require_browser() -> str:
    """Chromium's path; the browser tests skip without it locally and fail in CI."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    problems = []
    if not chromium:
        problems.append(
            "Chromium is not installed (apt-get install -y --no-install-recommends chromium)"
        )
    if not DIST.exists():
        problems.append("the web app is not built (run `make web`)")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        problems.append("Playwright is not installed (pip install -e '.[dev]')")
    if problems:
        message = "browser tests need: " + "; ".join(problems)
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    assert chromium is not None
    return chromium


@pytest.fixture(scope="module")
def tone_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tone_wav(tmp_path_factory.mktemp("media") / "tone-440.wav", 440.0, 10.0)


@pytest.fixture(scope="module")
async def browser(tone_file: Path) -> AsyncIterator[object]:
    chromium = require_browser()
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        launched = await p.chromium.launch(
            executable_path=chromium,
            args=[*CHROMIUM_FLAGS, f"--use-file-for-fake-audio-capture={tone_file}"],
        )
        try:
            yield launched
        finally:
            await launched.close()
