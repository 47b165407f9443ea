"""Every notebook under ``notebooks/`` runs top to bottom, is committed with its outputs (tidy,
with an image wherever it draws, under a size limit), and only imports the package, never defining
library code itself (STYLE.md 11).

The committed outputs are made by ``notebooks/store_outputs.py``; the run test executes a temporary
copy of each notebook with the same ``execute``: its fresh outputs are checked for errors, images
and size, never compared with the committed ones (timings and temporary paths differ run to run)
and never written back.

Each notebook runs on the model folder it loads (:data:`NOTEBOOK_MODELS`): the folder in its
environment variable if set, else the shipped one (skipped, with the reason, while that folder does
not exist yet).
"""

import copy
import importlib.util
import os
import re
import shutil
from pathlib import Path

import nbformat
import pytest

from diffusion import default_model_path, default_text_model_path

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
DEFINITION = re.compile(r"^\s*(?:async\s+def|def|class)\s+\w", re.MULTILINE)
DRAWS = re.compile(r"\bplt\.show\(|\bdisplay\(Image\(")  # a cell that shows a figure or a PNG

#: Notebook file name -> (environment variable it reads its model folder from, shipped default
#: folder). A notebook not listed loads the class-conditional model.
CLASS_MODEL = ("DIFFUSION_MODEL_PATH", default_model_path)
NOTEBOOK_MODELS = {
    "01_quickstart.ipynb": CLASS_MODEL,
    "02_text_to_image.ipynb": ("DIFFUSION_TEXT_MODEL_PATH", default_text_model_path),
    "03_samplers.ipynb": CLASS_MODEL,
    "04_compare_families.ipynb": CLASS_MODEL,
    "05_synthetic_data.ipynb": CLASS_MODEL,
}


def _store_outputs():
    """``notebooks/store_outputs.py`` (a script, not part of the installed packages)."""
    spec = importlib.util.spec_from_file_location("store_outputs",
                                                  NOTEBOOK_DIR / "store_outputs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


store_outputs = _store_outputs()


def code_cells(path_or_nb):
    """``(index, cell)`` for each code cell of a notebook (a path, or one already read)."""
    nb = path_or_nb if isinstance(path_or_nb, nbformat.NotebookNode) else nbformat.read(
        path_or_nb, as_version=4)
    return [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]


def cells_missing_images(nb) -> list[int]:
    """Indices of the code cells that draw (:data:`DRAWS`) but hold no PNG output."""
    return [i for i, c in code_cells(nb) if DRAWS.search(c.source)
            and not any("image/png" in o.get("data", {}) for o in c.outputs)]


def test_notebooks_exist():
    assert NOTEBOOKS, f"no notebooks found in {NOTEBOOK_DIR}"


def test_some_notebooks_draw():
    """The image checks below are not vacuous."""
    drawing = [p.name for p in NOTEBOOKS
               if any(DRAWS.search(c.source) for _, c in code_cells(p))]
    assert len(drawing) >= 4, f"only {drawing} draw; is DRAWS still the way the notebooks draw?"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_with_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    counts = [c.execution_count for _, c in code_cells(nb)]
    assert counts == list(range(1, len(counts) + 1)), (
        f"{path.name}: execution counts {counts}: not one run top to bottom; store it with "
        f"`python notebooks/store_outputs.py {path.name}`")
    errors = [i for i, c in code_cells(nb) if any(o.output_type == "error" for o in c.outputs)]
    assert not errors, f"{path.name}: code cells {errors} hold errors"
    missing = cells_missing_images(nb)
    assert not missing, f"{path.name}: code cells {missing} draw but hold no image"
    assert nb == store_outputs.tidy(copy.deepcopy(nb)), (
        f"{path.name} is not tidy (stderr, metadata or large PNGs); store it with "
        f"`python notebooks/store_outputs.py {path.name}`")
    size = path.stat().st_size
    assert size < store_outputs.MAX_BYTES, (
        f"{path.name}: {size:,} bytes, over {store_outputs.MAX_BYTES:,}; draw smaller figures")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_defines_no_library_code(path):
    offending = [i for i, c in code_cells(path) if DEFINITION.search(c.source)]
    assert not offending, (f"{path.name}: code cells {offending} define functions or classes; "
                           f"move them into the package and import them")


def test_model_table_names_existing_notebooks():
    missing = sorted(set(NOTEBOOK_MODELS) - {p.name for p in NOTEBOOKS})
    assert not missing, f"NOTEBOOK_MODELS names notebooks that do not exist: {missing}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_reads_its_model_variable(path):
    """The run test sets the variable of :data:`NOTEBOOK_MODELS`; a notebook reading another one
    would silently run on a different model."""
    variable, _ = NOTEBOOK_MODELS.get(path.name, CLASS_MODEL)
    assert any(variable in c.source for _, c in code_cells(path)), (
        f"{path.name} never reads ${variable}; load the model from "
        f"os.environ.get({variable!r}, ...) or fix its entry in NOTEBOOK_MODELS")


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path, monkeypatch):
    variable, default_path = NOTEBOOK_MODELS.get(path.name, CLASS_MODEL)
    model = os.environ.get(variable)
    if model is None:
        model = default_path()
        if not os.path.isdir(model):
            pytest.skip(f"shipped model {model} does not exist yet (it is trained before release); "
                        f"set {variable} to a saved pipeline folder to run this test")
    elif not os.path.isdir(model):
        pytest.fail(f"{variable}={model!r} is not a folder")
    monkeypatch.setenv(variable, model)  # the kernel inherits the environment

    committed = path.read_bytes()
    run_copy = tmp_path / path.name  # the kernel runs in tmp_path: nothing lands in notebooks/
    shutil.copyfile(path, run_copy)
    nb = store_outputs.execute(run_copy, timeout=600)  # raises CellExecutionError at a failing cell
    assert path.read_bytes() == committed, f"running {path.name} rewrote it"

    not_run = [i for i, c in code_cells(nb) if c.execution_count is None]
    assert not not_run, f"{path.name}: code cells {not_run} did not run"
    missing = cells_missing_images(nb)
    assert not missing, f"{path.name}: code cells {missing} drew no image"
    size = len(nbformat.writes(store_outputs.tidy(nb)).encode())
    assert size < store_outputs.MAX_BYTES, f"{path.name} would be stored at {size:,} bytes"
