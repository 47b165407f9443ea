"""The documentation site (``mkdocs.yml`` + ``docs/``) builds with ``--strict``, its API
reference shows every module of the three packages and every public name in them, and every
notebook is a page in the nav with the images stored in it.

"Public name" of a module: the names in its ``__all__`` when it has one, otherwise the functions
and classes it defines at top level whose names do not start with ``_``. A name a package
re-exports (e.g. ``diffusion.DiffusionImagePipeline``) counts as shown when the module that
defines it is shown. mkdocstrings gives every rendered object an HTML ``id`` equal to its path
(``id="diffusion.pipelines.diffusion.DiffusionImagePipeline"``); those ids are what is checked.

To document a new module, add ``::: package.module`` to one of ``docs/api/*.md``.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("mkdocs", reason="the docs tools are not installed: pip install -e '.[docs]'")
pytest.importorskip("material", reason="mkdocs-material is not installed: pip install -e '.[docs]'")
pytest.importorskip("mkdocstrings_handlers.python",
                    reason="mkdocstrings[python] is not installed: pip install -e '.[docs]'")
pytest.importorskip("mkdocs_jupyter",
                    reason="mkdocs-jupyter is not installed: pip install -e '.[docs]'")

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("diffusion", "samplers", "training")
API_PAGES = ROOT / "docs" / "api"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))  # rendered through docs/notebooks
RENDERED_PNG = re.compile(r'<img\b[^>]*\bsrc="data:image/png;base64,')  # an output image on a page
BUILD_SECONDS_LIMIT = 120  # measured: ~3 s on 2 shared CPU cores; generous for loaded machines


def documented_modules() -> dict[str, str]:
    """``{module: api page}`` for every ``::: module`` line of ``docs/api/*.md``."""
    found = {}
    for page in sorted(API_PAGES.glob("*.md")):
        for match in re.finditer(r"^:::\s+(\S+)\s*$", page.read_text(), flags=re.MULTILINE):
            found[match[1]] = page.name
    return found


def package_modules() -> list[str]:
    """Every module of the three packages, found on disk (``pkg/__init__.py`` -> ``pkg``)."""
    modules = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if "weights" in parts or any(p.startswith(".") for p in parts):
                continue
            if not (path.parent / "__init__.py").is_file():
                continue  # not part of the importable package
            modules.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return modules


def module_file(module: str) -> Path:
    path = ROOT.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def top_level_names(tree: ast.Module) -> tuple[set, set, list | None]:
    """``(functions and classes, every top-level binding, __all__ or None)`` of a module."""
    callables, bound, exported = set(), set(), None
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            callables.add(node.name)
            bound.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [t.id for t in targets if isinstance(t, ast.Name)]
            bound.update(names)
            if "__all__" in names and node.value is not None:
                exported = (exported or []) + list(ast.literal_eval(node.value))
    return callables, bound, exported


def public_names() -> dict[str, list[str]]:
    """``{module: [public names]}`` for every documented module of the packages."""
    return {module: public for module, (public, _) in _module_names().items()}


def _module_names() -> dict[str, tuple[list[str], set]]:
    result = {}
    for module in documented_modules():
        if module.split(".")[0] not in PACKAGES:
            continue
        callables, bound, exported = top_level_names(ast.parse(module_file(module).read_text()))
        public = exported if exported is not None else sorted(
            n for n in callables if not n.startswith("_"))
        result[module] = (public, bound)
    return result


@pytest.fixture(scope="module")
def built_site(tmp_path_factory):
    """``(completed process, site folder, seconds)`` of one strict build."""
    site = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(site)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    return proc, site, time.perf_counter() - start


def test_site_builds_strictly(built_site):
    proc, site, seconds = built_site
    assert proc.returncode == 0, (f"mkdocs build --strict failed (exit {proc.returncode}):\n"
                                  f"{proc.stderr[-8000:]}")
    assert (site / "index.html").is_file()
    assert seconds < BUILD_SECONDS_LIMIT, f"the docs build took {seconds:.0f} s"


def test_every_module_has_an_api_page():
    documented = documented_modules()
    missing = [m for m in package_modules() if m not in documented]
    assert not missing, (f"modules without an API entry: {missing}; add `::: <module>` to one of "
                         f"docs/api/*.md")
    stale = [m for m in documented if m not in package_modules()]
    assert not stale, f"docs/api/*.md names modules that do not exist: {stale}"


def test_every_public_name_is_in_the_api_reference(built_site):
    proc, site, _ = built_site
    if proc.returncode != 0:
        pytest.fail(f"the site did not build:\n{proc.stderr[-4000:]}")
    ids = set()
    for page in (site / "api").rglob("*.html"):
        ids.update(re.findall(r'\bid="([^"]+)"', page.read_text(encoding="utf-8")))
    names = _module_names()
    definers: dict[str, list[str]] = {}
    for module, (_, bound) in names.items():
        for name in bound:
            definers.setdefault(name, []).append(module)
    missing = []
    for module, (public, bound) in names.items():
        if module not in ids:
            missing.append(module)
        for name in public:
            # Defined here: its own id. Re-exported: the id in the module that defines it.
            homes = [module] if name in bound else definers.get(name, [module])
            if not any(f"{home}.{name}" in ids for home in homes):
                missing.append(f"{module}.{name}")
    assert not missing, (f"public names missing from the API reference: {missing} (a package "
                         f"root with `members:` in docs/api/*.md lists its names explicitly)")


def test_public_names_are_found():
    """The check above is not vacuous: it sees the main entry points."""
    names = public_names()
    assert "DiffusionImagePipeline" in names["diffusion.pipelines.diffusion"]
    assert "build_sampler" in names["samplers.diffusion"]
    assert "train" in names["training.loop"]
    assert set(names["diffusion"]) >= {"DiffusionImagePipeline", "default_model_path"}


def _extension():
    """``docs/_ext/rst_docstrings.py``, the griffe extension that renders reST idioms."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("rst_docstrings",
                                                  ROOT / "docs" / "_ext" / "rst_docstrings.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_literal_blocks_become_fenced_code():
    ext = _extension()
    text = ("Intro.\n\nExample::\n\n    >>> f(1)  # doctest: +SKIP\n    2\n\nAfter.\n\n"
            "A layout::\n\n    out/\n      a.png\n")
    assert ext.literal_blocks_to_fences(text) == (
        "Intro.\n\nExample:\n\n```pycon\n>>> f(1)\n2\n```\n\nAfter.\n\n"
        "A layout:\n\n```text\nout/\n  a.png\n```")
    # bare doctest lines (no ``::``) are fenced too; existing fences are left alone
    assert ext.literal_blocks_to_fences("Text:\n>>> x\n1") == "Text:\n\n```pycon\n>>> x\n1\n```"
    assert ext.literal_blocks_to_fences("```py\nx::\n    y\n```") == "```py\nx::\n    y\n```"


def test_multi_name_parameters_are_split():
    ext = _extension()
    text = ("Args:\n    a, b: both sizes,\n        in pixels.\n    c: other.\n\n"
            "Returns:\n    x, y: not parameters.")
    assert ext.split_multi_name_params(text) == (
        "Args:\n    a: both sizes,\n        in pixels.\n    b: both sizes,\n        in pixels.\n"
        "    c: other.\n\nReturns:\n    x, y: not parameters.")


def stored_pngs(notebook: Path) -> int:
    """How many PNG outputs ``notebook`` (an ``.ipynb``) holds."""
    import json

    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return sum("image/png" in output.get("data", {})
               for cell in cells for output in cell.get("outputs", []))


def test_every_notebook_is_in_the_nav():
    assert NOTEBOOKS, "no notebooks found"
    nav = (ROOT / "mkdocs.yml").read_text()
    missing = [p.name for p in NOTEBOOKS if f"notebooks/{p.name}" not in nav]
    assert not missing, f"notebooks missing from the Notebooks section of mkdocs.yml: {missing}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_page_shows_its_images(built_site, notebook):
    """mkdocs-jupyter renders the stored outputs (``execute: false``): a page shows exactly the
    notebook's PNGs, at least one each."""
    proc, site, _ = built_site
    if proc.returncode != 0:
        pytest.fail(f"the site did not build:\n{proc.stderr[-4000:]}")
    page = site / "notebooks" / notebook.stem / "index.html"
    assert page.is_file(), f"{notebook.name} was not rendered (expected {page})"
    rendered = len(RENDERED_PNG.findall(page.read_text(encoding="utf-8")))
    stored = stored_pngs(notebook)
    assert rendered >= 1, f"{page.relative_to(site)} shows no image ({stored} stored)"
    assert rendered == stored, (f"{page.relative_to(site)} shows {rendered} images of {stored} "
                                f"stored")
