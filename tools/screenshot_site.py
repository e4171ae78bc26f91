"""Takes a screenshot of a built site page in headless Chromium, from an element down.

Needs Debian's `chromium` and `chromium-driver` and `pip install selenium` (none is a project
dependency). Build the site first (`mkdocs build --strict`), then, for example:

    python tools/screenshot_site.py docs/screenshots/serial.png \\
        site/api/layers.combinators/index.html --element trax_sl.layers.combinators.stack.Serial
    python tools/screenshot_site.py docs/screenshots/notebook_streaming.png \\
        site/notebooks/streaming/index.html --element "css:.jp-OutputArea-output img"

`--element` is an element id, or `css:` and a CSS selector (its first match); the shot starts a
little above it and is `--height` pixels tall, 1280 wide.
"""

from __future__ import annotations

import argparse
import base64
import pathlib
import tempfile
import time

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

WIDTH = 1280
# As the machine's probe starts Chromium: no sandbox (root), no GPU, and nothing reaching the network.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def element_top(driver, element: str) -> float:
    """The element's distance from the top of the page, in CSS pixels."""
    if element.startswith("css:"):
        finder, key = "document.querySelector(arguments[0])", element[len("css:") :]
    else:
        finder, key = "document.getElementById(arguments[0])", element
    top = driver.execute_script(
        f"const e = {finder}; return e ? e.getBoundingClientRect().top + window.scrollY : null;", key
    )
    if top is None:
        raise SystemExit(f"no element {element!r} on the page")
    return top


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=pathlib.Path, help="the PNG to write")
    parser.add_argument("page", type=pathlib.Path, help="a built page, e.g. site/index.html")
    parser.add_argument("--element", help="an element id, or css:SELECTOR; default the top of the page")
    parser.add_argument("--height", type=int, default=1100)
    args = parser.parse_args()
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for flag in FLAGS + (f"--window-size={WIDTH},{args.height}", f"--user-data-dir={tempfile.mkdtemp()}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(args.page.resolve().as_uri())
        time.sleep(1.5)  # Fonts and highlighting settle.
        top = max(0.0, element_top(driver, args.element) - 60) if args.element else 0.0
        clip = {"x": 0, "y": top, "width": WIDTH, "height": args.height, "scale": 1}
        shot = driver.execute_cdp_cmd(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
        )
    finally:
        driver.quit()
    args.output.write_bytes(base64.b64decode(shot["data"]))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
