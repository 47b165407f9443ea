"""The command line's shape (``diffusion/cli/__init__.py``, ``options.py``): one module per
command with ``add_parser(subparsers)`` and ``run(args)``, every flag that several commands take
defined once in ``options.py``, and the old entry points still working."""

from __future__ import annotations

import argparse
import configparser
import importlib
import inspect
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

import diffusion.cli
from diffusion.cli import COMMANDS, build_parser, main, options

CLI_DIR = Path(diffusion.cli.__file__).parent
#: cli modules that are not commands: the shared flags and the scoring commands' setup.
SHARED_MODULES = {"__init__", "options", "scoring"}
#: Flags several commands take under one name but with a meaning of each command's own.
OWN_PER_COMMAND = {"--out": "each command's product: a grid PNG, a dataset folder, a JSON file, "
                            "a results folder, a Markdown table"}


def _subparsers(parser: argparse.ArgumentParser) -> dict:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_command_module_follows_the_convention():
    modules = {p.stem for p in CLI_DIR.glob("*.py")} - SHARED_MODULES
    assert sorted(m.__name__.rsplit(".", 1)[1] for m in COMMANDS) == sorted(modules)
    commands = _subparsers(build_parser())
    assert list(commands) == [m.__name__.rsplit(".", 1)[1] for m in COMMANDS]
    for module in COMMANDS:
        name = module.__name__.rsplit(".", 1)[1]
        assert list(inspect.signature(module.add_parser).parameters) == ["subparsers"], name
        assert list(inspect.signature(module.run).parameters) == ["args"], name
        sub = argparse.ArgumentParser().add_subparsers()
        made = module.add_parser(sub)
        assert isinstance(made, argparse.ArgumentParser) and list(sub.choices) == [name]
        assert sub.choices[name] is made
        assert commands[name].get_default("func") is module.run


def flag_definitions(build) -> dict:
    """``{(option string, type): {command: "file:line" of the add_argument call}}`` of the parser
    ``build()`` returns, recorded while it is built."""
    sites = {}
    original = argparse._ActionsContainer.add_argument

    def recording(self, *args, **kwargs):
        action = original(self, *args, **kwargs)
        caller = inspect.stack()[1]
        sites[id(action)] = f"{Path(caller.filename).name}:{caller.lineno}"
        return action

    argparse._ActionsContainer.add_argument = recording
    try:
        parser = build()
    finally:
        argparse._ActionsContainer.add_argument = original
    found = defaultdict(dict)
    for command, sub in _subparsers(parser).items():
        for action in sub._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    found[(flag, action.type)][command] = sites[id(action)]
    return found


def duplicated_flags(found, own=OWN_PER_COMMAND) -> list:
    """Flags taken by several commands that are not defined by one call in ``options.py``."""
    problems = []
    for (flag, _), by_command in sorted(found.items(), key=lambda kv: kv[0][0]):
        where = set(by_command.values())
        if len(by_command) > 1 and flag not in own and (
                len(where) > 1 or not next(iter(where)).startswith("options.py:")):
            problems.append(f"{flag}: {by_command}")
    return problems


def test_flags_shared_by_several_commands_are_defined_once_in_options():
    found = flag_definitions(build_parser)
    assert duplicated_flags(found) == []
    shared = {flag for (flag, _), by in found.items() if len(by) > 1}
    assert {"--device", "--quiet", "--sampler", "--steps", "--seed", "--batch-size",
            "--guidance-scale", "--model", "--temperature", "--metrics"} <= shared
    assert set(OWN_PER_COMMAND) <= shared  # an exemption that no longer applies is removed
    # --steps is two flags: one count (generate, synthesize, evaluate) or a list (sweep, compare).
    assert {t for (flag, t) in found if flag == "--steps"} == {int, options.int_list}


def test_the_duplicate_check_fails_on_a_second_definition():
    def build():
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers()
        a, b = sub.add_parser("a"), sub.add_parser("b")
        for p in (a, b):
            options.add_device(p)
            p.add_argument("--out")
        a.add_argument("--quiet", action="store_true")
        options.add_quiet(b)
        return parser

    problems = duplicated_flags(flag_definitions(build))
    assert len(problems) == 1 and problems[0].startswith("--quiet: {'a': 'test_parser.py:")


@pytest.mark.parametrize("command", [m.__name__.rsplit(".", 1)[1] for m in COMMANDS])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m diffusion {command}")


def test_help_runs_as_a_module():
    r = subprocess.run([sys.executable, "-m", "diffusion", "generate", "--help"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "--guidance-scale" in r.stdout and "--sampler" in r.stdout


def test_old_entry_points_still_work():
    import diffusion.__main__ as old

    assert old.main is main and old.build_parser is build_parser
    config = configparser.ConfigParser()
    config.read(CLI_DIR.parents[1] / "setup.cfg")
    (script,) = config["options.entry_points"]["console_scripts"].strip().splitlines()
    name, target = (part.strip() for part in script.split("="))
    module, function = target.split(":")
    assert name == "diffusion-centric"
    assert getattr(importlib.import_module(module), function) is main


@pytest.mark.parametrize("argv, message", [
    (["synthesize", "--per-class", "0", "--out", "x"], "error: --per-class must be >= 1, got 0"),
    (["evaluate", "--batch-size", "0"], "error: --batch-size must be >= 1, got 0"),
    (["evaluate", "--num-samples", "1"], "--num-samples must be >= 2, got 1"),
    (["compare", "--models", "m", "--shard-size", "0"], "--shard-size must be >= 1, got 0"),
    (["compare", "--models", "m", "--top-k", "3"], "--top-k: compare uses each model's saved"),
    (["evaluate", "--features", "inception"], "--features inception needs --inception-weights"),
])
def test_size_and_flag_errors_come_before_any_work(argv, message):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert message in str(e.value)
