"""Screenshots of the README and of docs pages as a visitor sees them, in headless Chromium.

The README is rendered by Python-Markdown (tables, fenced code; installed with mkdocs) into an HTML
page at the repository root, so its relative image paths (``docs/images/...``) resolve as on a
code host; the docs pages come from ``mkdocs build`` (``site/``). Each page is shot at a desktop
width, full height up to ``--height`` pixels.

    python benchmarks/screenshots.py --out runs/screenshots        # README + gallery + samplers
    python benchmarks/screenshots.py --pages gallery/index.html,autoregressive/index.html

Needs Debian's ``chromium`` (``apt-get install chromium``) and the docs extra.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CSS = """body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1012px;
margin:24px auto;padding:0 16px;color:#1f2328;line-height:1.5}img{max-width:100%}
table{border-collapse:collapse}td,th{border:1px solid #d0d7de;padding:4px 10px}
pre,code{background:#f6f8fa;font-size:85%}pre code{font-size:100%}pre{padding:12px;overflow:auto}h1,h2{border-bottom:1px
solid #d0d7de}"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    raise SystemExit("error: no chromium on PATH (apt-get install chromium)")


def shoot(url: str, out: Path, width: int, height: int) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size={width},{height}", f"--screenshot={out}", url],
                   check=True, capture_output=True, timeout=120)
    print(f"wrote {out} ({url})")
    return out


def render_readme() -> Path:
    import markdown

    html = markdown.markdown((REPO / "README.md").read_text(),
                             extensions=["tables", "fenced_code"])
    page = REPO / ".readme-preview.html"
    page.write_text(f"<!doctype html><meta charset=utf-8><style>{CSS}</style>{html}")
    return page


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/screenshots")
    p.add_argument("--pages", default="gallery/index.html,samplers/index.html",
                   help="comma list of pages under site/")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=2400)
    p.add_argument("--no-build", action="store_true", help="use the existing site/")
    args = p.parse_args(argv)
    out = Path(args.out)
    page = render_readme()
    try:
        shoot(page.as_uri(), out / "readme.png", args.width, args.height)
    finally:
        page.unlink()
    if not args.no_build:
        subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet"], cwd=REPO,
                       check=True)
    for name in args.pages.split(","):
        target = REPO / "site" / name
        if not target.is_file():
            raise SystemExit(f"error: {target} does not exist (mkdocs build)")
        shoot(target.as_uri(), out / (name.replace("/index.html", "").replace("/", "_") + ".png"),
              args.width, args.height)


if __name__ == "__main__":
    main()
