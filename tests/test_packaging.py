"""Every folder of Python code in the three packages is a regular package that setuptools'
``packages = find:`` (setup.cfg) ships: a folder without ``__init__.py`` imports from a checkout
as a namespace package but is left out of a wheel."""

from __future__ import annotations

from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("diffusion", "samplers", "training")


def code_folders() -> set[str]:
    found = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).parent.parts
            if "weights" not in parts and not any(p.startswith((".", "__")) for p in parts):
                found.add(".".join(parts))
    return found


def test_every_code_folder_is_a_package_that_setuptools_finds():
    folders = code_folders()
    assert {"diffusion.models", "diffusion.pipelines", "training.objectives"} <= folders
    missing = sorted(f for f in folders if not (ROOT / f.replace(".", "/") / "__init__.py").is_file())
    assert not missing, f"folders without __init__.py: {missing}"
    shipped = set(find_packages(str(ROOT), include=[f"{p}*" for p in PACKAGES]))
    assert folders <= shipped, sorted(folders - shipped)


def extras() -> dict[str, list[str]]:
    """``{extra: [requirement names, lower-case]}`` of ``[options.extras_require]`` in setup.cfg."""
    import configparser
    import re

    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return {extra: [re.match(r"[A-Za-z0-9._-]+", line)[0].lower()
                    for line in value.splitlines() if line.strip() and not line.startswith("#")]
            for extra, value in config["options.extras_require"].items()}


def test_notebooks_extra_installs_a_jupyter_front_end():
    """``pip install -e ".[notebooks]"`` then ``jupyter lab notebooks/`` (README) opens them; the
    dev extra (CI) needs only the kernel and nbclient that run them."""
    found = extras()
    assert "jupyterlab" in found["notebooks"], found["notebooks"]
    assert {"nbclient", "ipykernel"} <= set(found["notebooks"]) & set(found["dev"])
    assert "jupyterlab" not in found["dev"], "CI installs dev; it runs the notebooks headless"


def test_docs_extra_renders_the_notebooks():
    """mkdocs.yml's mkdocs-jupyter plugin is installed wherever the site is built (docs; dev, for
    tests/test_docs_site.py)."""
    found = extras()
    assert "mkdocs-jupyter" in found["docs"] and "mkdocs-jupyter" in found["dev"]
    assert "mkdocs-jupyter" in (ROOT / "mkdocs.yml").read_text()
