"""Import rules for the layering ``samplers`` <- ``diffusion`` <- ``training``.

The graph comes from ``tests/import_graph.py`` (static, read with :mod:`ast`). Each rule is a
function returning its violations, so the same functions are run on a tiny synthetic tree to show
they can fail. ``IMPORT_GRAPH_ROOT=/path/to/checkout`` checks another tree than this repo.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import textwrap
import tokenize
from pathlib import Path

import pytest

#: The only upward imports allowed (lower package importing a higher one), one place for all:
#: ``source module (it and its submodules) -> (allowed target package or module prefix, reason)``.
#: Each such import must say so in a comment containing "upward", on its line or the line above.
ALLOWED_UPWARD = {
    "diffusion.cli": ("training", "the CLI's training-related commands call into training"),
    "diffusion.evaluation.cas": ("training", "CAS trains a classifier with the training loop"),
}
#: Entries of ALLOWED_UPWARD that are permissions rather than records of an existing import: they
#: may match no import (the CLI may import training, but need not); the others must be used.
PERMISSIONS = {"diffusion.cli"}

ROOT = Path(os.environ.get("IMPORT_GRAPH_ROOT") or Path(__file__).resolve().parents[1]).resolve()


def _load_checker():
    """Import ``import_graph.py`` from this directory by path (a site-packages ``tests`` package
    from another project can shadow a plain import)."""
    spec = importlib.util.spec_from_file_location("import_graph", Path(__file__).with_name(
        "import_graph.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


ig = _load_checker()


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _allowance(edge, allowed):
    """The ``allowed`` key that permits this upward edge, or None."""
    return next((source for source, (target, _) in allowed.items()
                 if _under(edge.src, source) and _under(edge.dst, target)), None)


def _show(edge) -> str:
    return f"{edge.src}:{edge.lineno} -> {edge.dst}"


def cycle_problems(graph):
    return [f"{', '.join(c.members)}:\n" + "\n".join(f"    {ig.format_path(graph, p)}"
                                                    for p in c.paths) for c in ig.cycles(graph)]


def undeclared_upward(graph, allowed=ALLOWED_UPWARD):
    return [_show(e) for e in ig.upward_edges(graph) if _allowance(e, allowed) is None]


def _comments(path: Path):
    """``line number -> comment text`` of a source file."""
    with tokenize.open(path) as f:
        return {tok.start[0]: tok.string for tok in tokenize.generate_tokens(f.readline)
                if tok.type == tokenize.COMMENT}


def uncommented_upward(graph, allowed=ALLOWED_UPWARD):
    problems = []
    for edge in ig.upward_edges(graph):
        if _allowance(edge, allowed) is not None:
            comments = _comments(graph.files[edge.src])
            lines = range(edge.lineno - 1, edge.end_lineno + 1)  # line above .. last import line
            if not any(re.search(r"\bupward\b", comments.get(n, ""), re.I) for n in lines):
                problems.append(_show(edge))
    return problems


def stale_declarations(graph, allowed=ALLOWED_UPWARD, permissions=PERMISSIONS):
    used = {_allowance(e, allowed) for e in ig.upward_edges(graph)}
    return [f"{source} -> {target}" for source, (target, _) in allowed.items()
            if source not in used and source not in permissions]


def samplers_escapes(graph):
    return [_show(e) for e in graph.edges if ig.top(e.src) == "samplers"
            and ig.top(e.dst) != "samplers"]


@pytest.fixture(scope="module")
def graph():
    missing = [p for p in ig.PACKAGES if not (ROOT / p / "__init__.py").is_file()]
    assert not missing, f"{ROOT} lacks packages {missing} (IMPORT_GRAPH_ROOT?)"
    return ig.module_graph(ROOT)


def test_no_import_cycles(graph):
    problems = cycle_problems(graph)
    assert not problems, "import cycles (module:line of each import):\n" + "\n".join(problems)


def test_upward_imports_are_declared(graph):
    problems = undeclared_upward(graph)
    assert not problems, ("imports against samplers <- diffusion <- training, not in "
                          "ALLOWED_UPWARD:\n  " + "\n  ".join(problems))


def test_allowed_upward_imports_say_so(graph):
    problems = uncommented_upward(graph)
    assert not problems, ('allowed upward imports need a comment with "upward" on the import '
                          "or the line above:\n  " + "\n  ".join(problems))


def test_no_stale_upward_declarations(graph):
    assert PERMISSIONS <= ALLOWED_UPWARD.keys()
    problems = stale_declarations(graph)
    assert not problems, ("ALLOWED_UPWARD entries with no such import (remove them):\n  "
                          + "\n  ".join(problems))


def test_samplers_imports_nothing_above_it(graph):
    problems = samplers_escapes(graph)
    assert not problems, "samplers imports diffusion/training:\n  " + "\n  ".join(problems)


def test_in_tree_imports_resolve(graph):
    problems = [_show(e) for e in graph.unresolved]
    assert not problems, "imports of modules not in the tree:\n  " + "\n  ".join(problems)


TINY_TREE = {
    "samplers/__init__.py": "from .core import run\n",
    "samplers/core.py": "import numpy\n\ndef run():\n    from diffusion import models\n",
    "diffusion/__init__.py": "VERSION = 1\n",
    "diffusion/models.py": "from . import utils\nfrom diffusion import VERSION\n",
    "diffusion/utils.py": "if True:\n    from diffusion.models import Model\n",
    "diffusion/sub/__init__.py": """\
        from . import deep
        # upward edge: documented
        from training import loop
        """,
    "diffusion/sub/deep.py": """\
        from ..models import Model
        from .. import utils

        class Deep:
            try:
                import training.loop
            except ImportError:
                pass
        """,
    "training/__init__.py": "",
    "training/loop.py": "from samplers import core, run\nfrom training import loop\nimport torch\n",
}


def test_checker_on_a_tiny_tree(tmp_path):
    for name, text in TINY_TREE.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(textwrap.dedent(text))
    graph = ig.module_graph(tmp_path)
    assert graph == {
        "samplers": {"samplers.core"},                       # relative, submodule
        "samplers.core": {"diffusion.models"},               # in a function; numpy ignored
        "diffusion": set(),
        "diffusion.models": {"diffusion.utils", "diffusion"},  # module vs name
        "diffusion.utils": {"diffusion.models"},             # in an if-block
        "diffusion.sub": {"diffusion.sub.deep", "training.loop"},
        "diffusion.sub.deep": {"diffusion.models", "diffusion.utils", "training.loop"},
        "training": set(),
        "training.loop": {"samplers.core", "samplers", "training.loop"},
    }
    assert ig.package_edges(graph)[("training", "samplers")] == 2
    assert [(e.src, e.dst, e.lineno) for e in ig.upward_edges(graph)] == [
        ("diffusion.sub", "training.loop", 3), ("diffusion.sub.deep", "training.loop", 6),
        ("samplers.core", "diffusion.models", 4)]
    assert sorted(ig.cycles(graph)) == [
        (["diffusion.models", "diffusion.utils"], [["diffusion.models", "diffusion.utils",
                                                    "diffusion.models"]]),
        (["training.loop"], [["training.loop", "training.loop"]])]
    assert cycle_problems(graph)[0].endswith(
        "diffusion.models:1 -> diffusion.utils:2 -> diffusion.models")
    allowed = {"diffusion.sub": ("training", "test"), "diffusion.gone": ("training", "test")}
    assert undeclared_upward(graph, allowed) == ["samplers.core:4 -> diffusion.models"]
    assert uncommented_upward(graph, allowed) == ["diffusion.sub.deep:6 -> training.loop"]
    assert stale_declarations(graph, allowed, permissions=set()) == ["diffusion.gone -> training"]
    assert stale_declarations(graph, allowed, permissions={"diffusion.gone"}) == []
    assert samplers_escapes(graph) == ["samplers.core:4 -> diffusion.models"]


def test_unresolved_in_tree_import(tmp_path):
    for package in ig.PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "training" / "__init__.py").write_text("from diffusion.moved import thing\n")
    graph = ig.module_graph(tmp_path)
    assert graph["training"] == set()
    assert [_show(e) for e in graph.unresolved] == ["training:1 -> diffusion.moved"]
