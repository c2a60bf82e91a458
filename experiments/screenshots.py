"""Screenshots of a study as a researcher sees it: the MLflow comparison view and the report.

    make screenshots            (after make demo: the demo study in ./mlruns.db)
    python experiments/screenshots.py --experiment demo --uri sqlite:///$PWD/mlruns.db \
        --report experiments/reports/demo/report.html --out experiments/reports/demo

Starts the MLflow UI the way ``make ui`` does (``python -m seqexp.ui``, on a free port of 127.0.0.1), opens the
comparison URL it prints in headless Chromium (Debian's ``chromium``, driven by Playwright, as
tests/test_ui_browser.py does), waits until the parallel-coordinates chart has drawn its axes, and saves
``ui_compare.png``; then opens the report and saves the top of it as ``report.png``. Nothing is drawn by hand:
what the PNGs show is what the UI and the report show.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from seqexp.ui import CHROMIUM_ARGS, serve

VIEWPORT = {"width": 1600, "height": 1000}
TIMEOUT_MS = 120_000


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlruns.db"))
    p.add_argument("--experiment", default="demo")
    p.add_argument("--report", type=Path, required=True, help="the study's report.html")
    p.add_argument("--out", type=Path, required=True, help="folder for ui_compare.png and report.png")
    p.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = p.parse_args(argv)
    if not Path(args.chromium).is_file():
        raise SystemExit(f"no chromium at {args.chromium} (apt-get install chromium)")
    if not args.report.is_file():
        raise SystemExit(f"no report at {args.report} (make report EXP={args.experiment})")
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / ".ui.log"
    with serve(args.uri, log, experiment=args.experiment) as urls, sync_playwright() as pw:
        if "comparison" not in urls:
            raise SystemExit(f"seqexp.ui printed no comparison URL for {args.experiment!r}:\n{log.read_text()}")
        browser = pw.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
        page = browser.new_context(viewport=VIEWPORT).new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(urls["comparison"])
        page.get_by_text("Parallel Coordinates").first.wait_for()
        page.wait_for_function("""() => { const t = [...document.querySelectorAll('svg text')]
                                            .map(e => e.textContent);
                                          return ['freeze', 'test_f1'].every(k => t.includes(k)); }""")
        assistant = page.get_by_text("MLflow Assistant")  # MLflow 3's chat panel: closed, it leaves the charts room
        if assistant.count():
            page.locator("button[aria-label='Close']").last.click()
        page.wait_for_timeout(2000)  # the charts' transitions
        page.screenshot(path=str(args.out / "ui_compare.png"))
        page.goto(args.report.resolve().as_uri())
        page.wait_for_function("() => [...document.images].every(i => i.complete)")
        page.screenshot(path=str(args.out / "report.png"))
        browser.close()
    log.unlink(missing_ok=True)
    for name in ("ui_compare.png", "report.png"):
        print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
