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
