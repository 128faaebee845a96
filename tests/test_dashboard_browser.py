"""End to end: headless Chromium drives the real dashboard page against the real model."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("EMOVEC_CHROMIUM", "/usr/bin/chromium")
if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
    pytest.skip(
        f"no Chromium at {CHROMIUM}: install it with `apt-get install -y chromium`",
        allow_module_level=True,
    )
pytest.importorskip("fastapi", reason="the dashboard needs fastapi (pip install 'emovec[serve]')")
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="browser tests need playwright (pip install playwright)"
)

from emovec.apps.server import HEADLESS_CHROMIUM_ARGS, Dashboard, ServerThread  # noqa: E402

PROMPT = "Tell me about your day."
#: Where screenshots go: a temporary folder, or docs/img with EMOVEC_SCREENSHOTS=docs/img.
SHOTS = os.environ.get("EMOVEC_SCREENSHOTS")


@pytest.fixture(scope="module")
def server(lm, vectors, baseline, tmp_path_factory):
    running = ServerThread(
        Dashboard(lm, vectors, tmp_path_factory.mktemp("browser-data"), baseline=baseline)
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def page(server):
    with sync_api.sync_playwright() as pw:
        path = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
        browser = pw.chromium.launch(
            executable_path=path, headless=True, args=HEADLESS_CHROMIUM_ARGS
        )
        tab = browser.new_page(viewport={"width": 1280, "height": 860})
        tab.set_default_timeout(120_000)
        tab.goto(server.page_url)
        tab.wait_for_selector("#status.ready")
        yield tab
        browser.close()


def shoot(page, tmp_path, name: str) -> None:
    folder = Path(SHOTS) if SHOTS else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / name), full_page=True)


def send(page, prompt: str, tokens: int) -> None:
    page.fill("#prompt", prompt)
    page.fill("#max-tokens", str(tokens))
    page.click("#send")
    page.wait_for_selector("#status.busy")
    page.wait_for_selector("#status.ready")


def reply_text(page, selector: str) -> str:
    return "".join(page.locator(f"{selector} .token").all_inner_texts())


def test_chat_streams_tokens_and_heatmap_cells(page, tmp_path):
    assert "reading layer" in page.inner_text("#model-info")
    watched = page.locator("#watch-list input:checked").count()
    send(page, PROMPT, 5)
    reply = page.locator(".turn").last.locator(".reply")
    assert reply.count() == 1
    assert reply.locator(".token").count() == 5
    assert reply.locator(".cell").count() == 5 * watched  # one cell per token and emotion
    assert reply.locator(".token").first.get_attribute("title").count("z ") == watched
    assert "stopped by length" in reply.locator(".reply-foot").inner_text()
    assert page.locator("#trace-list option").count() >= 1
    # the timeline's legend names each watched emotion, and the watched ones stand out
    names = [x.strip() for x in page.locator("#watch-list label.on").all_inner_texts()]
    assert len(names) == watched and page.inner_text("#watch-count") == f"({watched} on)"
    keys = reply.locator(".timeline-legend .key").all_inner_texts()
    assert keys == [*names, "z = 3"]
    shoot(page, tmp_path, "dashboard-chat.png")


def test_moving_a_steering_control_changes_the_next_reply(page, tmp_path):
    before = reply_text(page, ".turn:last-child .reply")
    assert before, "the previous test left a reply"
    row = page.locator(".steer-row").first
    row.locator("select").select_option("calm")
    row.locator("input[type=range]").fill("0.5")
    assert row.locator("span").inner_text() == "0.50"
    page.check("#compare")
    send(page, PROMPT, 5)
    turn = page.locator(".turn").last
    assert "side-by-side" in turn.locator(".replies").get_attribute("class")
    plain = reply_text(page, ".turn:last-child .reply[data-label=unsteered]")
    steered = reply_text(page, ".turn:last-child .reply[data-label=steered]")
    assert plain == before  # greedy: the unsteered reply is reproduced exactly
    assert steered and steered != plain
    assert "calm +0.5" in turn.locator(".reply[data-label=steered] .reply-label").inner_text()
    shoot(page, tmp_path, "dashboard-side-by-side.png")


def test_alert_firings_and_trace_replay(page, tmp_path):
    page.uncheck("#compare")
    page.locator(".steer-row input[type=range]").first.fill("0")
    rule = page.locator(".rule-row").first
    rule.locator("select").first.select_option("afraid")
    rule.locator("input").first.fill("3")
    assert not rule.locator(".counter-steer").is_visible()  # only for a steer action
    rule.locator(".rule-action").select_option("steer")
    rule.locator(".counter-emotion").select_option("happy")
    rule.locator(".counter-strength").fill("0.5")
    send(page, "Write one sentence about being terrified in a dark alley at night.", 4)
    assert page.locator("#alert-log li").count() >= 1
    log = page.inner_text("#alert-log")
    assert "afraid level 3" in log and "steer happy +0.5" in log  # the user's counter-steer
    page.click("#refresh-traces")
    page.locator("#trace-list").select_option(index=0)
    page.click("#replay")
    replay = page.locator(".reply[data-label=replay]")
    replay.locator(".reply-foot").filter(has_text="stopped by").wait_for()
    assert replay.locator(".token").count() >= 1 and replay.locator(".cell").count() >= 1
    shoot(page, tmp_path, "dashboard-replay.png")


def test_sampling_with_a_seed_replays_the_same_reply(page):
    page.fill("#temperature", "1.3")
    page.fill("#seed", "11")
    send(page, PROMPT, 6)
    first = reply_text(page, ".turn:last-child .reply")
    foot = page.locator(".turn:last-child .reply-foot").inner_text()
    assert "temperature 1.3, seed 11" in foot
    send(page, PROMPT, 6)
    assert reply_text(page, ".turn:last-child .reply") == first  # same seed, same reply
    page.fill("#temperature", "0")
