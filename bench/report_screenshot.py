"""Open a session report in a real headless browser (Chromium, from Debian's `chromium` package), take a
screenshot and check it is not blank: the page renders, its figures load from the files beside it, offline.

    python bench/report_screenshot.py SESSION [SESSION ...] --sessions-dir sessions --out /tmp/report

Prints the screenshot's path, its size, and the share of non-white pixels (a blank page gives 0).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from selfpruner.core.results.report import build_report
from selfpruner.core.session_files import resolve_session

from bench_args import add  # bench/ is on sys.path when run as a script

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def screenshot(page: Path, png: Path, width: int = 1200, height: int = 2400) -> Path:
    browser = next((b for b in map(shutil.which, BROWSERS) if b), None)
    if browser is None:
        raise SystemExit("no Chromium found: apt-get install chromium")
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size={width},{height}", f"--screenshot={png}", page.resolve().as_uri()],
                   check=True, capture_output=True, timeout=120)
    return png


def ink(png: Path) -> float:
    """Share of pixels that are not (near) white."""
    import matplotlib.image as mpimg
    img = mpimg.imread(png)[..., :3]
    return float((img.min(axis=-1) < 0.9).mean())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("session", nargs="+")
    add(ap, sessions_dir="sessions")
    ap.add_argument("--out", default="/tmp/selfpruner-report")
    args = ap.parse_args(argv)
    page = build_report([resolve_session(s, args.sessions_dir) for s in args.session], args.out)
    png = screenshot(page, Path(args.out) / "screenshot.png")
    share = ink(png)
    print(f"{png}: {png.stat().st_size} bytes, {100 * share:.1f}% non-white pixels "
          f"({'rendered' if share > 0.02 else 'BLANK'})")
    return 0 if share > 0.02 else 1


if __name__ == "__main__":
    sys.exit(main())
