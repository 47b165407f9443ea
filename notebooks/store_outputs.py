"""Run the notebooks and store them with their outputs, small and without run-to-run noise.

The notebooks are committed with their outputs so that they read as pages (GitHub, the docs site
through mkdocs-jupyter) without being run. This script is how those outputs are made::

    OMP_NUM_THREADS=1 python notebooks/store_outputs.py                  # every notebook
    OMP_NUM_THREADS=1 python notebooks/store_outputs.py 03_samplers.ipynb  # one

Each notebook is executed top to bottom in a fresh ``python3`` kernel bound to this interpreter,
with the checkout's packages first on its path, then passed through :func:`tidy` and written back.
``tests/test_notebooks.py`` imports :func:`execute` and :func:`tidy` from here: it executes every
notebook in memory (never writing it back) and checks that the committed ones are tidy, hold their
images and stay under :data:`MAX_BYTES`.

Figures are drawn at :data:`FIGURE_DPI`. What :func:`tidy` keeps: stdout text (after a carriage
return only the last rewrite of a line, so progress bars collapse to their final state; paths
under the checkout relative to it, as ``diffusion/weights/...``), results, PNG and Markdown
displays (PNGs re-encoded small: grey ones as one grey channel, coloured ones as a 256-colour
palette). What it drops: stderr streams (warnings, progress bars), the ``text/plain`` stand-ins
of images (``<Figure size ...>``), cell metadata and every notebook metadata field but the
kernel.
"""

from __future__ import annotations

import base64
import io
import os
import re
import sys
import tempfile
from pathlib import Path

import nbformat

NOTEBOOK_DIR = Path(__file__).resolve().parent
ROOT = NOTEBOOK_DIR.parent
MAX_BYTES = 300_000  # a committed notebook, outputs included
FIGURE_DPI = 80  # matplotlib's default is 100; 80 keeps a notebook's PNGs near half the bytes
KERNEL = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
RICH = ("image/png", "text/markdown", "text/html")  # a display with one of these drops text/plain
CARRIAGE_RETURN = re.compile(r"[^\n]*\r(?!\n)")  # text up to and including a bare "\r"


def execute(path: Path, timeout: int = 900) -> nbformat.NotebookNode:
    """Run the notebook at ``path`` and return it with its outputs; ``path`` is not written.

    The kernel runs in the notebook's folder with this interpreter (a kernelspec written to a
    temporary ``JUPYTER_PATH``), with :data:`ROOT` first on ``PYTHONPATH``, so that it imports
    the checkout's packages, and with figures drawn at :data:`FIGURE_DPI` (a ``matplotlibrc`` of
    its own in place of yours). The environment is otherwise inherited
    (``$DIFFUSION_MODEL_PATH`` and the like). Raises ``nbclient.exceptions.CellExecutionError``
    at the first cell that raises.
    """
    from ipykernel.kernelspec import write_kernel_spec
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    saved = {k: os.environ.get(k) for k in ("JUPYTER_PATH", "PYTHONPATH", "MATPLOTLIBRC")}
    with tempfile.TemporaryDirectory() as jupyter_path:
        write_kernel_spec(Path(jupyter_path) / "kernels" / "python3")
        (Path(jupyter_path) / "matplotlibrc").write_text(f"figure.dpi: {FIGURE_DPI}\n")
        os.environ["JUPYTER_PATH"] = jupyter_path
        os.environ["MATPLOTLIBRC"] = jupyter_path
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), saved["PYTHONPATH"]) if p)
        try:
            NotebookClient(nb, kernel_name="python3", timeout=timeout, allow_errors=False,
                           record_timing=False,
                           resources={"metadata": {"path": str(Path(path).parent)}}).execute()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    return nb


def small_png(data: str) -> str:
    """The base64 PNG ``data`` re-encoded small: one grey channel if it is grey (lossless), else
    a palette of 256 colours (see below), optimised deflate; the original if not smaller."""
    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(data)))
    image.load()
    if image.mode in ("RGBA", "LA") and image.getextrema()[-1][0] == 255:
        image = image.convert(image.mode[:-1])  # fully opaque: the alpha channel says nothing
    if image.mode == "RGB" and image.convert("L").convert("RGB").tobytes() == image.tobytes():
        image = image.convert("L")  # grey only: one channel says it all
    elif image.mode == "RGB":
        # Median cut to 256 colours without dithering: exact for images of at most 256 colours;
        # for plots, only the anti-aliased edges of lines and text move to a neighbouring shade.
        image = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                               dither=Image.Dither.NONE)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return encoded if len(encoded) < len(data.replace("\n", "")) else data.replace("\n", "")


def tidy(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """``nb`` as it is committed: see the module docstring. Returns ``nb``, changed in place;
    tidying a tidy notebook changes nothing."""
    nb.metadata = nbformat.from_dict({"kernelspec": dict(KERNEL),
                                      "language_info": {"name": "python"}})
    for cell in nb.cells:
        cell.metadata = nbformat.from_dict({})
        if cell.cell_type != "code":
            continue
        outputs = []
        for output in cell.outputs:
            if output.output_type == "stream":
                if output.name == "stderr":
                    continue
                if outputs and outputs[-1].output_type == "stream":
                    outputs[-1].text += output.text  # one block per run of stdout
                    continue
            elif output.output_type in ("display_data", "execute_result"):
                output.metadata = nbformat.from_dict({})
                if any(kind in output.data for kind in RICH):
                    output.data.pop("text/plain", None)
                if "image/png" in output.data:
                    output.data["image/png"] = small_png(output.data["image/png"])
            outputs.append(output)
        for output in outputs:
            if output.output_type == "stream":  # paths under the checkout printed relative to it
                output.text = CARRIAGE_RETURN.sub("", output.text).replace(f"{ROOT}{os.sep}", "")
        cell.outputs = outputs
    return nb


def main(argv: list[str]) -> int:
    paths = [NOTEBOOK_DIR / name for name in argv] or sorted(NOTEBOOK_DIR.glob("*.ipynb"))
    for path in paths:
        nb = tidy(execute(path))
        nbformat.validate(nb)
        nbformat.write(nb, path)
        size = path.stat().st_size
        print(f"{path.name}: {size / 1000:.0f} KB" + (f" (over {MAX_BYTES / 1000:.0f} KB)"
                                                      if size > MAX_BYTES else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
