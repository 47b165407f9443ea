"""Every notebook under ``notebooks/`` runs top to bottom, is committed without outputs, and only
imports the package, never defining library code itself (STYLE.md 11).

Each notebook runs on the model folder it loads (:data:`NOTEBOOK_MODELS`): the folder in its
environment variable if set, else the shipped one (skipped, with the reason, while that folder does
not exist yet).
"""

import os
import re
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from diffusion import default_model_path, default_text_model_path

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
DEFINITION = re.compile(r"^\s*(?:async\s+def|def|class)\s+\w", re.MULTILINE)

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


def code_cells(path: Path):
    """``(index, cell)`` for each code cell of the notebook at ``path``."""
    nb = nbformat.read(path, as_version=4)
    return [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]


@pytest.fixture
def python3_kernel(tmp_path, monkeypatch) -> str:
    """Kernel name ``python3`` bound to this interpreter (the one with the package installed).

    A kernelspec written for ``sys.executable`` goes on ``JUPYTER_PATH``, which Jupyter searches
    before the environment, user and system folders, so a stray ``~/.local`` kernelspec cannot
    start another Python.
    """
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client.kernelspec import KernelSpecManager

    write_kernel_spec(tmp_path / "kernels" / "python3")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    argv = KernelSpecManager().get_kernel_spec("python3").argv
    assert argv[0] == sys.executable, f"kernel python3 would run {argv[0]}, not {sys.executable}"
    return "python3"


def test_notebooks_exist():
    assert NOTEBOOKS, f"no notebooks found in {NOTEBOOK_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_clean(path):
    nbformat.validate(nbformat.read(path, as_version=4))
    dirty = [i for i, c in code_cells(path) if c.outputs or c.execution_count is not None]
    assert not dirty, (f"{path.name}: code cells {dirty} hold outputs or execution counts; clear "
                       f"them with `jupyter nbconvert --clear-output --inplace {path}`")


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
def test_notebook_runs(path, python3_kernel, monkeypatch):
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

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, kernel_name=python3_kernel, timeout=600, allow_errors=False,
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError at the first cell that raises

    not_run = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.execution_count is None]
    assert not not_run, f"{path.name}: code cells {not_run} did not run"
