"""The README's picture of the live view: ``vllm-hogwild serve`` as typed (the embedded model,
its defaults), the page at /hogwild in headless Chromium, one run with the page's defaults,
a screenshot once the final answer is in.

    python scripts/live_view_screenshot.py [--out docs/live_view.png] [--workers 3]

Needs Debian's Chromium (``apt-get install chromium``) and Playwright for Python (the test
extra). Nothing else is set: what the picture shows is what a user who follows the README sees.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # a script: the root, for tests.helpers

from tests.helpers.servers import running_server  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "docs" / "live_view.png"))
    p.add_argument("--workers", default="3")
    args = p.parse_args()
    browser_path = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser_path is None:
        raise SystemExit("no Chromium on this machine (Debian: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp, running_server(None, Path(tmp), as_typed=True, start_timeout=600) as base:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=browser_path, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--disable-quic"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(base + "/hogwild")
            page.fill("#workers", args.workers)
            page.click("#start")
            page.wait_for_selector("#answer:not([hidden])", timeout=600_000)
            page.wait_for_function("document.querySelector('#status').textContent === 'Done.'", timeout=60_000)
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    print(f"wrote {os.path.relpath(args.out)}")


if __name__ == "__main__":
    main()
