"""The web console's weight and first load, in Debian's headless Chromium against a real server.

    python -m bench.bench_console [--adapters 1000] [--loads 15] [--chromium /usr/bin/chromium]

The server is `uvicorn app.main:app` with the embedded MiniLM and N stored adapters (copies of
one, as bench_store makes them). Each page is loaded `--loads` times, each time in a new browser
context (empty cache, as a first visit): `view_ms` is from the start of navigation until the
view is drawn with its API data (the page marks it), `load_event_ms` the browser's load event.
Target of issue 15: the first page (/, the adapter list) under 300 ms; JavaScript and CSS under
200 KB. Prints one JSON object; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

from app.console import STATIC_DIR
from app.model.encoder import FrozenEncoder
from bench.bench_store import populate
from bench.common import emit, percentile, runtime_info, setup_logging
from bench.server import Server

log = logging.getLogger("bench.console")
PAGES = {"adapters": "/", "adapter": "/ui/adapters/a00000", "try": "/ui/try/a00000",
         "train": "/ui/train", "jobs": "/ui/jobs"}
TARGET_MS = 300
BUDGET_BYTES = 200 * 1024
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]


def asset_bytes() -> dict[str, int]:
    files = [f for f in STATIC_DIR.rglob("*") if f.is_file()]
    js = sum(f.stat().st_size for f in files if f.suffix == ".js")
    css = sum(f.stat().st_size for f in files if f.suffix == ".css")
    ours = sum(f.stat().st_size for f in files if f.suffix in (".js", ".css")
               and "vendor" not in f.parts)
    return {"javascript": js, "css": css, "js_and_css": js + css, "of_which_ours": ours,
            "budget": BUDGET_BYTES}


def load_once(browser: Any, url: str) -> dict[str, float]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    try:
        page = context.new_page()
        page.goto(url)
        page.wait_for_selector("body[data-ready]")
        timing = page.evaluate("""() => {
            const nav = performance.getEntriesByType('navigation')[0];
            const sent = performance.getEntriesByType('resource')
                .reduce((n, r) => n + r.transferSize, nav.transferSize);
            return {view_ms: +document.body.dataset.readyAt,
                    load_event_ms: nav.loadEventEnd, requests: performance
                        .getEntriesByType('resource').length + 1, bytes: sent};
        }""")
        return {k: float(v) for k, v in timing.items()}
    finally:
        context.close()


def summary(loads: list[dict[str, float]]) -> dict[str, Any]:
    view = [x["view_ms"] for x in loads]
    load = [x["load_event_ms"] for x in loads]
    return {"view_ms": {"median": round(statistics.median(view), 1),
                        "p90": round(percentile(view, 90), 1), "max": round(max(view), 1)},
            "load_event_ms_median": round(statistics.median(load), 1),
            "requests": int(loads[0]["requests"]), "bytes_transferred": int(loads[0]["bytes"])}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--adapters", type=int, default=1000)
    parser.add_argument("--loads", type=int, default=15)
    parser.add_argument("--port", type=int, default=8791)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    args = parser.parse_args(argv)
    setup_logging()
    from playwright.sync_api import sync_playwright  # the [test] extra

    with tempfile.TemporaryDirectory(prefix="bench-console-") as tmp:
        populate(Path(tmp), FrozenEncoder.load(""), args.adapters)
        with Server(Path(tmp) / "store", args.port) as server, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            load_once(browser, server.url + "/")  # the server's first answers warm its caches
            pages = {}
            for name, path in PAGES.items():
                log.info("loading %s %d times", path, args.loads)
                pages[name] = summary([load_once(browser, server.url + path)
                                       for _ in range(args.loads)])
            browser.close()
    first = pages["adapters"]["view_ms"]["median"]
    emit({"benchmark": "console", "adapters_stored": args.adapters, "loads_per_page": args.loads,
          "assets": asset_bytes(), "pages": pages,
          "first_page_view_ms_median": first, "target_ms": TARGET_MS,
          "target_met": first < TARGET_MS and asset_bytes()["js_and_css"] < BUDGET_BYTES,
          **runtime_info()})


if __name__ == "__main__":
    main()
