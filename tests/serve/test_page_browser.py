"""The page in a real browser: headless Chromium (driven by Playwright) opens `stc serve`'s page
with 2 synthetic streams on the shipped model, sees both pictures with their overlays and
figures, types a question into one stream's ask box and sees its answer appear.

Skipped when Playwright (the `browser` extra) or a Chromium binary is missing. Playwright's own
browser download is not needed: the test launches the system's Chromium."""

import itertools
import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is missing: pip install 'stc-videollm[browser]'")

CHROMIUM = os.environ.get("STC_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("no Chromium binary (chromium on PATH, or STC_CHROMIUM=/path/to/chrome)", allow_module_level=True)

from stc.cli.demo import default_model  # noqa: E402
from stc.eval.presets import load_model  # noqa: E402
from stc.eval.synthetic.source import SyntheticSource  # noqa: E402
from stc.integrations.engine.options import SessionOptions  # noqa: E402
from stc.integrations.serve.requests import ServerDefaults  # noqa: E402
from stc.integrations.serve.shared_model import SharedModel  # noqa: E402
from stc.integrations.serve.sources import SourceOpener  # noqa: E402
from stc.integrations.serve.streams import StreamManager  # noqa: E402
from tests.serve.fakes import RunningServer  # noqa: E402

PICTURE_HEIGHT = 360  # what the page asks for; the synthetic frames are 96 x 96
MEMORY_BUDGET = 1 << 20  # per stream: the page's memory bar shows a share of it
FRAMES = 4  # frames each stream shows before the question
QUESTION = "How many objects are visible now? Answer with a number."


@pytest.fixture
def two_streams():
    model, processor, _ = load_model(default_model()[0])
    defaults = ServerDefaults(session=SessionOptions(max_new_tokens=8, sample_fps=1.0, memory_budget=MEMORY_BUDGET),
                              realtime=True)
    episodes = itertools.count()  # each stream its own episode, as `stc serve` gives them
    sources = SourceOpener(synthetic=lambda: SyntheticSource(next(episodes)))
    manager = StreamManager(SharedModel(model, processor), sources, defaults)
    for _ in range(2):
        manager.add({"source": "synthetic"})
    yield manager
    manager.close()


def test_the_page_shows_two_streams_and_answers_a_question_typed_into_it(two_streams, tmp_path):
    screenshot = Path(os.environ.get("STC_PAGE_SCREENSHOT") or tmp_path / "serve-page.png")
    with RunningServer(two_streams) as server, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 760})
            page.goto(server.url + "/")
            page.wait_for_function("document.querySelectorAll('.card').length === 2", timeout=30000)
            # both pictures loaded, drawn by the server with the overlay at the page's height
            page.wait_for_function(
                f"[...document.querySelectorAll('.card img.picture')].every(i => i.complete && i.naturalHeight === {PICTURE_HEIGHT})",
                timeout=60000)
            page.wait_for_function(
                "[...document.querySelectorAll('.card .figures')].filter(f => /ViT tokens reused \\d+ of \\d+/.test(f.textContent)"
                f" && /LLM tokens kept/.test(f.textContent) && +/frames (\\d+)/.exec(f.textContent)[1] >= {FRAMES}).length === 2",
                timeout=60000)
            second = page.locator(".card").nth(1)
            with page.expect_response(lambda r: "/frame.jpg?heatmap=1" in r.url and r.ok, timeout=30000):
                second.locator(".heatmap").check()  # the kept-token heat map on the second stream's picture
            assert page.locator(".card .memory-text").nth(1).inner_text().endswith("of 1.00 MiB budget, 0 blocks evicted")
            assert 0 < float(page.locator(".card .bar > div").first.evaluate("d => parseFloat(d.style.width)")) < 100
            first = page.locator(".card").first
            first.locator(".ask input[type=text]").fill(QUESTION)
            first.locator(".ask input[type=text]").press("Enter")
            page.wait_for_function("document.querySelector('.card').dataset.answers === '1'", timeout=120000)
            answer = first.locator(".answers .a").first.inner_text()
            meta = first.locator(".answers .meta").first.inner_text()
            assert first.locator(".answers .q").first.inner_text() == "Q: " + QUESTION
            assert answer.startswith("A: ") and len(answer) > len("A: ")
            assert meta.startswith("at t=") and " frames, " in meta and meta.endswith(" ms")
            assert second.locator(".answers li").count() == 0  # only the stream asked
            assert two_streams.list()[0].questions_answered == 1
            page.screenshot(path=str(screenshot))
        finally:
            browser.close()
    assert screenshot.stat().st_size > 10000
