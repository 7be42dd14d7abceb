"""Screenshots of the built site with headless Chromium, on a desktop and on a phone's width.

    mkdocs build --strict && python docs/screenshots.py            # PNGs in site/screenshots/
    python docs/screenshots.py --site site --out /tmp/shots --widths 1280,390 --height 1800

One PNG per page and width, ``<page>-<width>.png``: the top ``--height`` pixels of the home page,
the decision guide, the summaries that open Results and Performance, and the SIGUAOptimizer API.

Serves the built site on a local port (the site's links are directory URLs) and runs Chromium
(Debian's ``chromium`` package, or ``--chromium PATH``) once per page. No network is needed; pages
that load MathJax from its CDN show the TeX source where the browser cannot reach it.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import itertools
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = {
    "home": "",
    "which-condition": "which-condition/",
    "results": "results/",
    "performance": "performance/",
    "api": "api/",
}
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--virtual-time-budget=5000",
]


class Quiet(http.server.SimpleHTTPRequestHandler):
    """Serves files without logging each request."""

    def log_message(self, format: str, *args: object) -> None:
        """Log nothing."""


def shoot(site: Path, out: Path, chromium: str, widths: list[int], height: int) -> list[Path]:
    """Serve ``site`` on 127.0.0.1 and write ``out/<name>-<width>.png`` for each page of PAGES."""
    if not (site / "index.html").exists():
        raise FileNotFoundError(f"no built site in {site}: run mkdocs build first")
    handler = functools.partial(Quiet, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    try:
        for (name, path), width in itertools.product(PAGES.items(), widths):
            with tempfile.TemporaryDirectory() as profile:
                png = out / f"{name}-{width}.png"
                url = f"http://127.0.0.1:{server.server_port}/{path}"
                command = [chromium, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"]
                command += [f"--screenshot={png}", url]
                subprocess.run(command, check=True, capture_output=True, timeout=120)
                written.append(png)
    finally:
        server.shutdown()
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", type=Path, default=ROOT / "site", help="the built site (default: site/)")
    parser.add_argument("--out", type=Path, help="where the PNGs go (default: <site>/screenshots)")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    parser.add_argument("--widths", default="1280,390", help="window widths in px, comma-separated")
    parser.add_argument("--height", type=int, default=1800)
    args = parser.parse_args(argv)
    out = args.out or args.site / "screenshots"
    widths = [int(width) for width in args.widths.split(",")]
    for png in shoot(args.site, out, args.chromium, widths, args.height):
        print(png)


if __name__ == "__main__":
    main()
