"""Griffe extension for the docs site: render the packages' reStructuredText idioms as Markdown.

The docstrings follow Google style for sections (``Args:``, ``Returns:``, ``Raises:``) but use a
few reST idioms that Markdown does not know. This extension rewrites them when griffe loads the
packages, before mkdocstrings parses and renders a docstring; the source files are untouched.

- Literal blocks introduced by ``::`` (``Example::`` + an indented block) -> fenced code blocks
  (``pycon`` when the block is a doctest, otherwise ``text``); bare ``>>>`` runs -> ``pycon``
  fences. ``# doctest: +SKIP``-style flags are dropped from displayed examples.
- Sphinx roles (``:func:`~a.b.c```, ``:class:`Name```, ``:meth:``, ``:mod:``, ``:attr:``,
  ``:data:``, ``:obj:``, ``:exc:``) -> an optional cross-reference: a link when the name resolves
  to an object rendered on the site, plain code otherwise (never a broken link).
- Google-style parameter entries that name several parameters (``a, b: what both are``) become
  one entry per name with the shared description, so each matches the signature.
- ``#:`` comments above an attribute, or the comment at the end of its line (the config
  dataclasses document each field that way), become the attribute's docstring.

Used by ``mkdocs.yml`` (``plugins.mkdocstrings.handlers.python.options.extensions``).
"""

from __future__ import annotations

import re
import textwrap
from html import escape

import griffe

ROOT_PACKAGES = ("diffusion", "samplers", "training")
_ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|obj|exc):`(?P<tilde>~?)(?P<target>[^`]+)`")
_DOCTEST_FLAGS = re.compile(r"\s*#\s*doctest:.*$")
_FENCE = re.compile(r"^\s*```")
_PARAM_SECTION = re.compile(r"^(?P<indent> *)(Args|Arguments|Parameters|Params|Keyword Args|"
                            r"Keyword Arguments|Other Parameters):\s*$")
_MULTI_PARAM = re.compile(r"^(?P<indent> +)(?P<names>\w+(?:\s*,\s*\w+)+)\s*:(?P<rest>\s.*|)$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _fence(block: list[str], indent: str) -> list[str]:
    """``block`` (already dedented) as a fenced code block at ``indent``."""
    while block and not block[-1].strip():
        block.pop()
    doctest = bool(block) and block[0].lstrip().startswith(">>>")
    if doctest:
        block = [_DOCTEST_FLAGS.sub("", line) for line in block]
    return [indent + "```" + ("pycon" if doctest else "text"),
            *[(indent + line) if line.strip() else "" for line in block],
            indent + "```"]


def literal_blocks_to_fences(text: str) -> str:
    """``intro::`` + indented block -> ``intro:`` + fenced block; bare ``>>>`` runs -> fences."""
    lines = text.split("\n")
    out: list[str] = []
    i, in_fence = 0, False
    while i < len(lines):
        line = lines[i]
        if _FENCE.match(line):
            in_fence = not in_fence
            out.append(line)
            i += 1
            continue
        if in_fence:
            out.append(line)
            i += 1
            continue
        stripped = line.rstrip()
        if stripped.endswith("::"):
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            if j < len(lines) and _indent(lines[j]) > _indent(line):
                end = j
                while end < len(lines) and (not lines[end].strip()
                                            or _indent(lines[end]) > _indent(line)):
                    end += 1
                intro = stripped[:-2].rstrip()
                indent = " " * _indent(line)
                if intro.strip():
                    out.append(intro + ":")
                out.append("")
                out.extend(_fence(textwrap.dedent("\n".join(lines[j:end])).split("\n"), indent))
                out.append("")
                i = end
                continue
        if line.lstrip().startswith(">>>"):
            indent = " " * _indent(line)
            end = i
            while end < len(lines) and lines[end].strip():
                end += 1
            if out and out[-1].strip():
                out.append("")
            out.extend(_fence(textwrap.dedent("\n".join(lines[i:end])).split("\n"), indent))
            out.append("")
            i = end
            continue
        out.append(line)
        i += 1
    return "\n".join(out).rstrip("\n")


def split_multi_name_params(text: str) -> str:
    """``a, b: description`` in an Args section -> ``a: description`` and ``b: description``."""
    lines = text.split("\n")
    out: list[str] = []
    section_indent = None
    i = 0
    while i < len(lines):
        line = lines[i]
        header = _PARAM_SECTION.match(line)
        if header:
            section_indent = len(header["indent"])
        elif section_indent is not None and line.strip() and _indent(line) <= section_indent:
            section_indent = None
        match = _MULTI_PARAM.match(line) if section_indent is not None else None
        if match and len(match["indent"]) > section_indent:
            end = i + 1
            while end < len(lines) and (not lines[end].strip()
                                        or _indent(lines[end]) > len(match["indent"])):
                end += 1
            while end > i + 1 and not lines[end - 1].strip():
                end -= 1
            for name in re.split(r"\s*,\s*", match["names"]):
                out.append(f"{match['indent']}{name}:{match['rest']}")
                out.extend(lines[i + 1:end])
            i = end
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def _resolve(obj: griffe.Object, target: str) -> str | None:
    """Full path of ``target`` as seen from ``obj``'s scope, or ``None``."""
    if target.split(".")[0] in ROOT_PACKAGES:
        return target
    head, _, rest = target.partition(".")
    scope = obj
    while scope is not None:
        try:
            path = scope.resolve(head)
        except (griffe.NameResolutionError, AttributeError):
            scope = None
            break
        return f"{path}.{rest}" if rest else path
    return None


def roles_to_crossrefs(text: str, obj: griffe.Object) -> str:
    """Sphinx roles -> optional autorefs (a link if the target is rendered, code otherwise)."""

    def replace(match: re.Match) -> str:
        target = match["target"].strip()
        if target.endswith("()"):
            target = target[:-2]
        shown = target.rsplit(".", 1)[-1] if match["tilde"] else target
        title = f"<code>{escape(shown)}</code>"
        path = _resolve(obj, target)
        if path is None:
            return title
        return f'<autoref identifier="{escape(path)}" optional>{title}</autoref>'

    # Roles inside fenced code stay as they are.
    parts = re.split(r"(^\s*```.*?^\s*```)", text, flags=re.MULTILINE | re.DOTALL)
    return "".join(p if p.lstrip().startswith("```") else _ROLE.sub(replace, p) for p in parts)


def comment_docstring(attr: griffe.Attribute) -> str | None:
    """A ``#:`` block above the attribute, else the comment ending its (first) line."""
    if attr.lineno is None or attr.filepath is None:
        return None
    try:
        lines = attr.lines_collection[attr.filepath]
    except KeyError:
        return None
    i = attr.lineno - 1
    above = []
    j = i - 1
    while j >= 0 and lines[j].lstrip().startswith("#:"):
        above.insert(0, lines[j].lstrip()[2:].strip())
        j -= 1
    if above:
        return " ".join(above)
    line = lines[i]
    match = re.search(r"\s#\s?(?P<text>[^'\"]*)$", line)
    if not match or match["text"].startswith(("noqa", "type:")):
        return None
    column = match.start() + 1
    text = [match["text"].strip()]
    k = i + 1
    while k < len(lines) and lines[k].strip().startswith("#") \
            and len(lines[k]) - len(lines[k].lstrip()) == column:
        text.append(lines[k].strip()[1:].strip())
        k += 1
    return " ".join(text)


class RstDocstrings(griffe.Extension):
    """Rewrite docstrings of the project's packages when each package is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        if pkg.name in ROOT_PACKAGES:
            self._visit(pkg, set())

    def _visit(self, obj: griffe.Object, seen: set) -> None:
        if obj.path in seen:
            return
        seen.add(obj.path)
        # Module and class attributes (dataclass fields included), not ``self.x`` in methods.
        in_method = "instance-attribute" in obj.labels and "class-attribute" not in obj.labels
        if obj.is_attribute and obj.docstring is None and not in_method:
            comment = comment_docstring(obj)
            if comment:
                obj.docstring = griffe.Docstring(comment, parent=obj)
        if obj.docstring is not None:
            value = literal_blocks_to_fences(split_multi_name_params(obj.docstring.value))
            obj.docstring.value = roles_to_crossrefs(value, obj)
        for member in obj.members.values():
            if not member.is_alias:
                self._visit(member, seen)
