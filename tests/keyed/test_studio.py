"""The web studio in a real browser: Debian's headless Chromium, driven by Playwright, against the shared app.

Submit a prompt, watch the progress bar move, see the video in the gallery and play it (the browser asks for byte
ranges); an inline error naming the field; screenshots at desktop and phone width, saved where
`STUDIO_SCREENSHOTS` says (else the test's temporary folder) and printed.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.media import png
from tests.support.app import STUDIO_KEY

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# what the browser needs on a machine with no network and no display; a fresh profile each time
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required"]
DESKTOP, PHONE = {"width": 1280, "height": 860}, {"width": 390, "height": 844}

if CHROMIUM is None:
    pytest.skip("no chromium on PATH: scripts/setup.sh installs Debian's where it can (root and apt-get); "
                "the studio's browser test needs it", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extras: pip install -e .[test]")

# record every width a card's bar takes, so the test sees the bar move, not only where it ends
WATCH_BAR = """(id) => { window.widths = [];
  const bar = document.querySelector(`#gallery .card[data-id='${id}'] .bar div`);
  new MutationObserver(() => window.widths.push(parseFloat(bar.style.width) || 0))
  .observe(bar, {attributes: true}); }"""

THUMBNAIL_SHOWN = "id => document.querySelector(`.card[data-id='${id}'] img`).naturalWidth > 0"


def submit(page: sync_api.Page) -> sync_api.Locator:
    """Click Generate; the new job's card (the gallery may hold older jobs' cards)."""
    with page.expect_response(lambda r: r.url.endswith("/v1/videos") and r.request.method == "POST") as created:
        page.click("#submit")
    assert created.value.status == 200, created.value.text()
    return page.locator(f"#gallery .card[data-id='{created.value.json()['id']}']")


@pytest.fixture(scope="module")
def browser() -> Iterator[sync_api.Browser]:
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("STUDIO_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_submit_watch_the_bar_and_play_the_video(browser: sync_api.Browser, serve_url: str, shots: Path) -> None:
    page = browser.new_page(viewport=DESKTOP)
    ranges: list[str] = []
    page.on("request", lambda r: ranges.append(r.headers.get("range", "")) if r.url.endswith("/content") else None)
    page.goto(serve_url + "/")
    assert page.url.endswith("/studio/"), "/ leads to the studio"
    page.wait_for_selector("body[data-ready=true]")
    assert page.locator("#model option").count() > 3, "the models come from /v1/models"
    page.fill("#prompt", "a lighthouse at dusk, waves breaking")
    page.select_option("#model", "tiny-t2v")
    page.fill("#seed", "7")
    page.click("details summary")
    page.fill("#size", "128x64")
    page.fill("#num_frames", "33")
    # Steps are reported at most twice a second: seconds of them (on any machine) move the bar several times after the
    # bar is watched, which is once the job is made.
    page.fill("#num_inference_steps", "200")
    first = submit(page)
    page.evaluate(WATCH_BAR, first.get_attribute("data-id"))
    sync_api.expect(first.locator(".badge")).to_have_text("completed", timeout=120_000)
    widths = page.evaluate("window.widths")
    moving = sorted({w for w in widths if 0 < w < 100})
    assert len(moving) >= 3 and widths[-1] == 100, f"the bar must move step by step: {widths}"
    assert "tiny-t2v" in first.locator(".meta").inner_text() and "33 frames" in first.locator(".stage").inner_text()
    page.wait_for_function(THUMBNAIL_SHOWN, arg=first.get_attribute("data-id"))
    page.screenshot(path=shots / "studio-desktop.png")

    first.locator(".play").click()
    page.wait_for_function("() => { const v = document.querySelector('#player-video'); "
                           "return v.readyState >= 2 && v.duration > 0; }", timeout=30_000)
    size = page.evaluate("() => { const v = document.querySelector('#player-video'); "
                         "return [v.videoWidth, v.videoHeight, v.duration]; }")
    assert size[:2] == [128, 64] and 2.0 < size[2] < 2.1, f"33 frames at 16 fps, 128x64: {size}"
    assert any(r.startswith("bytes=") for r in ranges), f"the player reads byte ranges: {ranges}"
    page.screenshot(path=shots / "studio-player.png")
    print(f"studio screenshots in {shots}")


def test_errors_show_inline_and_name_the_field(browser: sync_api.Browser, serve_url: str) -> None:
    page = browser.new_page(viewport=DESKTOP)
    page.goto(serve_url + "/studio/")
    page.wait_for_selector("body[data-ready=true]")
    page.fill("#prompt", "too small")
    page.fill("#size", "7x7")
    page.click("#submit")
    sync_api.expect(page.locator("#form-error")).to_contain_text("size")
    assert "invalid" in page.locator("#size").get_attribute("class")
    page.fill("#prompt", "")
    page.fill("#size", "")
    page.click("#submit")
    sync_api.expect(page.locator("#form-error")).to_contain_text("prompt")


def test_drop_an_image_and_cancel_from_the_gallery(browser: sync_api.Browser, serve_url: str, shots: Path,
                                                  tmp_path: Path) -> None:
    page = browser.new_page(viewport=PHONE)
    page.goto(serve_url + "/studio/")
    page.wait_for_selector("body[data-ready=true]")
    image = tmp_path / "first.png"
    image.write_bytes(png(seed=3))
    page.set_input_files(".drop[data-field=input_reference] input", image)
    sync_api.expect(page.locator(".drop[data-field=input_reference] span")).to_have_text("first.png")
    page.fill("#prompt", "the first frame comes alive")
    page.click("details summary")
    page.fill("#num_frames", "81")
    page.fill("#num_inference_steps", "200")
    first = submit(page)
    sync_api.expect(first.locator(".badge")).to_have_text("in progress", timeout=60_000)
    assert "i2v" in first.locator(".meta").inner_text(), "an image makes it image-to-video"
    page.screenshot(path=shots / "studio-phone.png", full_page=True)
    first.locator(".cancel").click()
    sync_api.expect(first.locator(".badge")).to_have_text("cancelled", timeout=60_000)
    video_id = first.get_attribute("data-id")
    first.locator(".delete").click()
    sync_api.expect(page.locator(f"#gallery .card[data-id='{video_id}']")).to_have_count(0)
    assert httpx.get(f"{serve_url}/v1/videos/{video_id}").status_code == 404


def test_with_a_key_the_studio_asks_for_it_keeps_it_and_plays_through_it(browser: sync_api.Browser,
                                                                           keyed_url: str) -> None:
    """The key is entered once and kept; the thumbnail and the player's byte ranges, which cannot carry a header,
    get it from the studio's service worker."""
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    page.goto(keyed_url + "/")
    assert page.url == f"{keyed_url}/studio/", "/ leads to the studio under the app's route prefix"
    page.wait_for_selector("body[data-ready=true]")
    sync_api.expect(page.locator("#gallery-error")).to_contain_text("API key")
    page.fill("#api-key", STUDIO_KEY)
    page.click("#key-form button")
    sync_api.expect(page.locator("#gallery-error")).to_be_hidden()
    page.reload()  # kept in the browser: no key to enter again
    page.wait_for_selector("body[data-ready=true]")
    assert page.input_value("#api-key") == STUDIO_KEY
    page.fill("#prompt", "behind a key")
    first = submit(page)
    sync_api.expect(first.locator(".badge")).to_have_text("completed", timeout=120_000)
    page.wait_for_function(THUMBNAIL_SHOWN, arg=first.get_attribute("data-id"))
    first.locator(".play").click()
    page.wait_for_function("() => document.querySelector('#player-video').readyState >= 2", timeout=30_000)
    assert page.evaluate("document.querySelector('#player-video').videoWidth") == 64
    context.close()
