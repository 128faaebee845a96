"""Screenshots of the dashboard's main views for docs/img, from a real session.

Starts the dashboard on a free loopback port with the given vectors, drives headless Chromium
through a chat reply with an alert rule that counter-steers, a steered-vs-unsteered
comparison and a trace replay.

    python scripts/dashboard_screenshots.py --vectors emovec-out/<model>/vectors.safetensors
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from emovec.apps.server import HEADLESS_CHROMIUM_ARGS, Dashboard, ServerThread
from emovec.models import load_model
from emovec.monitor import calibrate
from emovec.vectors import EmotionVectors


def send(page, prompt: str, tokens: int) -> None:
    page.fill("#prompt", prompt)
    page.fill("#max-tokens", str(tokens))
    page.click("#send")
    page.wait_for_selector("#status.busy")
    page.wait_for_selector("#status.ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", required=True)
    parser.add_argument("--out", default="docs/img")
    parser.add_argument("--tokens", type=int, default=28)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    lm = load_model()
    vectors = EmotionVectors.load(args.vectors)
    baseline = calibrate(lm, vectors, limit=16)
    with tempfile.TemporaryDirectory() as data:
        server = ServerThread(Dashboard(lm, vectors, data, baseline=baseline))
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(
                    executable_path=args.chromium, headless=True, args=HEADLESS_CHROMIUM_ARGS
                )
                page = browser.new_page(viewport={"width": 1360, "height": 900})
                page.set_default_timeout(600_000)
                page.goto(server.page_url)
                page.wait_for_selector("#status.ready")
                rule = page.locator(".rule-row").first
                rule.locator("select").first.select_option("afraid")
                rule.locator(".rule-action").select_option("steer")  # counter-steer on firing
                rule.locator(".counter-emotion").select_option("calm")
                rule.locator(".counter-strength").fill("0.3")
                send(page, "Write a short story about being lost in a dark forest.", args.tokens)
                page.screenshot(path=str(out / "dashboard-chat.png"), full_page=True)
                steer = page.locator(".steer-row").first
                steer.locator("select").select_option("calm")
                steer.locator("input[type=range]").fill("0.5")
                page.check("#compare")
                send(page, "Tell me about your day.", args.tokens)
                page.locator(".turn").last.scroll_into_view_if_needed()
                page.screenshot(path=str(out / "dashboard-side-by-side.png"), full_page=True)
                page.uncheck("#compare")
                page.click("#refresh-traces")
                page.locator("#trace-list").select_option(index=0)
                page.click("#replay")
                page.locator(".reply[data-label=replay] .reply-foot").filter(
                    has_text="stopped by"
                ).wait_for()
                page.screenshot(path=str(out / "dashboard-replay.png"), full_page=True)
                browser.close()
        finally:
            server.stop()
    print(f"screenshots in {out}")


if __name__ == "__main__":
    main()
