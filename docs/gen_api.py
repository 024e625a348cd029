"""Write docs/api.md, the API reference, from the docstrings of sdplite's public API.

    python docs/gen_api.py            # (re)write docs/api.md
    python docs/gen_api.py --check    # exit 1 if docs/api.md is not what this would write

The public API is everything in ``sdplite.__all__``, ``sdplite.wire.__all__``,
``sdplite.testing.__all__``, ``sdplite.dra.__all__`` and ``sdplite.discovery.__all__``,
plus ``sdplite.podresources.PodResourcesClient`` and ``sdplite.supervisor.Supervisor``.
For each object: its signature and docstring; for a class also its public
methods, properties and instance attributes (those set in ``__init__``; a
``#:`` comment above the assignment is its documentation). The output is
sorted and free of memory addresses, so it only changes when the API does.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import enum
import importlib
import inspect
import os
import re
import sys
import textwrap
from typing import Any, Callable, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUTPUT = os.path.join(HERE, "api.md")

#: (module, names to document or None for its ``__all__``), in the order of the sections.
SECTIONS: list[tuple[str, Optional[list[str]]]] = [
    ("sdplite", None),
    ("sdplite.wire", None),
    ("sdplite.testing", None),
    ("sdplite.podresources", ["PodResourcesClient"]),
    ("sdplite.replicas", ["Replicas", "replica_id"]),
    ("sdplite.healthcheck", ["HealthCheck"]),
    (
        "sdplite.cdi",
        ["SpecFile", "CdiError", "build_spec", "write_spec", "remove_spec", "qualified_name", "kind_for"],
    ),
    ("sdplite.dra", None),
    ("sdplite.discovery", None),
    ("sdplite.supervisor", ["Supervisor"]),
]

WIDTH = 100  # longer signatures get one parameter per line
UNDOCUMENTED = "*(no docstring)*"


# -- docstrings: reStructuredText bits to Markdown ---------------------------------


def _inline(text: str) -> str:
    """``code`` and :role:`target` become Markdown code spans (``~a.b.C`` shows as ``C``)."""

    def role(match: re.Match[str]) -> str:
        target = match.group(2)
        return f"`{target.rsplit('.', 1)[-1] if match.group(1) else target}`"

    text = re.sub(r":[a-z]+:`(~?)([^`]+)`", role, text)
    return re.sub(r"``(.+?)``", r"`\1`", text)


def docstring_markdown(doc: Optional[str]) -> str:
    """A cleaned docstring as Markdown: doctests and ``::`` blocks fenced, roles as code."""
    if not doc or not doc.strip():
        return UNDOCUMENTED
    lines = inspect.cleandoc(doc).splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith(">>>"):
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(re.sub(r"\s*# doctest:.*$", "", lines[i].strip()))
                i += 1
            out += ["```pycon", *block, "```"]
            continue
        if line.rstrip().endswith("::"):
            text = line.rstrip()[:-2].rstrip()
            if text:
                out.append(_inline(text) + ":")
            i += 1
            while i < len(lines) and not lines[i].strip():
                i += 1
            block = []
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith((" ", "\t"))):
                block.append(lines[i])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            out += ["", "```", *textwrap.dedent("\n".join(block)).splitlines(), "```", ""]
            continue
        out.append(_inline(line))
        i += 1
    return "\n".join(out).strip()


def own_doc(obj: Any) -> Optional[str]:
    """The object's own docstring: never one inherited from a base class, never a dataclass's
    generated ``Name(field: type, ...)`` text."""
    doc = obj.__dict__.get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
    if isinstance(obj, type) and doc and doc.startswith(obj.__name__ + "("):
        return None
    return doc if isinstance(doc, str) else None


# -- signatures --------------------------------------------------------------------


def _annotation(value: Any) -> str:
    if value is inspect.Parameter.empty:
        return ""
    if isinstance(value, str):  # every sdplite module uses `from __future__ import annotations`
        return value
    if isinstance(value, type):
        return value.__qualname__
    return re.sub(r"\btyping\.", "", repr(value))


def _default(name: str, value: Any) -> str:
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    if isinstance(value, int) and not isinstance(value, bool) and name.endswith("_mode"):
        return oct(value)
    text = repr(value)
    return re.sub(r" at 0x[0-9a-fA-F]+", "", text)


def format_signature(name: str, func: Callable[..., Any], drop_first: bool = False) -> str:
    """``name(params) -> return``, from the function's own annotations (no evaluation)."""
    signature = inspect.signature(func)
    params = list(signature.parameters.values())
    if drop_first and params:
        params = params[1:]
    parts: list[str] = []
    star_done = False
    for index, param in enumerate(params):
        if param.kind is param.KEYWORD_ONLY and not star_done:
            parts.append("*")
            star_done = True
        prefix = {param.VAR_POSITIONAL: "*", param.VAR_KEYWORD: "**"}.get(param.kind, "")
        if param.kind is param.VAR_POSITIONAL:
            star_done = True
        text = prefix + param.name
        annotation = _annotation(param.annotation)
        if annotation:
            text += f": {annotation}"
        if param.default is not param.empty:
            text += (" = " if annotation else "=") + _default(param.name, param.default)
        parts.append(text)
        following = params[index + 1] if index + 1 < len(params) else None
        if param.kind is param.POSITIONAL_ONLY and (following is None or following.kind is not param.kind):
            parts.append("/")
    returns = _annotation(signature.return_annotation)
    tail = f" -> {returns}" if returns else ""
    one_line = f"{name}({', '.join(parts)}){tail}"
    if len(one_line) <= WIDTH or not parts:
        return one_line
    body = "".join(f"    {part},\n" for part in parts)
    return f"{name}(\n{body}){tail}"


def code(text: str) -> list[str]:
    return ["```python", text, "```", ""]


# -- classes -------------------------------------------------------------------------


def _sdplite_classes(cls: type) -> list[type]:
    """The classes in ``cls``'s MRO that sdplite defines, most derived first."""
    return [c for c in cls.__mro__ if c.__module__.split(".")[0] == "sdplite"]


def _init_attributes(cls: type) -> list[tuple[str, str]]:
    """Public ``self.name = ...`` assignments in ``__init__``, with their ``#:`` comments."""
    init = cls.__dict__.get("__init__")
    if init is None or not inspect.isfunction(init):
        return []
    try:
        source_lines, _ = inspect.getsourcelines(init)
    except (OSError, TypeError):
        return []
    source = textwrap.dedent("".join(source_lines))
    tree = ast.parse(source)
    lines = source.splitlines()
    found: dict[str, str] = {}
    for node in ast.walk(tree):
        targets: list[Any] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        for target in targets:
            if not (
                isinstance(target, ast.Attribute)
                and isinstance(target.value, ast.Name)
                and target.value.id == "self"
                and not target.attr.startswith("_")
            ):
                continue
            comment: list[str] = []
            row = node.lineno - 2  # the line above, 0-based
            while row >= 0 and lines[row].strip().startswith("#:"):
                comment.insert(0, lines[row].strip()[2:].strip())
                row -= 1
            if target.attr not in found or (comment and not found[target.attr]):
                found[target.attr] = " ".join(comment)
    return sorted(found.items())


def class_members(cls: type) -> tuple[list[str], list[str], list[tuple[str, str]]]:
    """(properties, methods, attributes) as Markdown lines, each group sorted by name."""
    seen: dict[str, tuple[type, Any]] = {}
    for owner in _sdplite_classes(cls):
        for name, value in vars(owner).items():
            if not name.startswith("_") and name not in seen:
                seen[name] = (owner, value)
    properties: list[str] = []
    methods: list[str] = []
    for name in sorted(seen):
        owner, value = seen[name]
        if isinstance(value, property):
            returns = ""
            if value.fget is not None:
                returns = _annotation(inspect.signature(value.fget).return_annotation)
            kind = "property" if value.fset is None else "property, settable"
            head = f"`{name}`" + (f" → `{returns}`" if returns else "") + f" ({kind})"
            properties += [f"#### {head}", "", docstring_markdown(own_doc(value.fget)), ""]
        elif isinstance(value, (classmethod, staticmethod)):
            func = value.__func__
            label = "classmethod" if isinstance(value, classmethod) else "staticmethod"
            signature = format_signature(name, func, drop_first=isinstance(value, classmethod))
            methods += [
                f"#### `{name}()` ({label})",
                "",
                *code(signature),
                docstring_markdown(own_doc(func)),
                "",
            ]
        elif inspect.isfunction(value):
            signature = format_signature(name, value, drop_first=True)
            methods += [f"#### `{name}()`", "", *code(signature), docstring_markdown(own_doc(value)), ""]
    attributes: list[tuple[str, str]] = []
    names = set(seen)
    for owner in _sdplite_classes(cls):
        for name, comment in _init_attributes(owner):
            if name not in names:
                names.add(name)
                attributes.append((name, comment))
    return properties, methods, sorted(attributes)


def _own_init(cls: type) -> Optional[Callable[..., Any]]:
    """The ``__init__`` an sdplite class defines (or a dataclass generates), not typing's stand-ins."""
    for owner in _sdplite_classes(cls):
        init = owner.__dict__.get("__init__")
        if not inspect.isfunction(init):
            continue
        # Python < 3.10 names a dataclass's generated __init__ `__create_fn__.<locals>.__init__`.
        if init.__qualname__ == f"{owner.__qualname__}.__init__" or dataclasses.is_dataclass(owner):
            return init
    return None


def _protocols(cls: type) -> list[str]:
    notes = []
    own = {name for owner in _sdplite_classes(cls) for name in vars(owner)}
    if "__enter__" in own:
        notes.append("usable as a context manager")
    if "__iter__" in own:
        notes.append("iterable")
    return notes


def document_class(qualified: str, cls: type) -> list[str]:
    bases = [b.__name__ for b in cls.__bases__ if b is not object]
    out = [f"*class*{' (' + ', '.join(bases) + ')' if bases else ''}", ""]
    init = _own_init(cls)
    if issubclass(cls, enum.Enum):
        members = "\n".join(f"{member.name} = {member.value!r}" for member in cls)
        out += [docstring_markdown(own_doc(cls)), "", "Members:", "", *code(members)]
    else:
        if init is not None:
            out += code(format_signature(cls.__name__, init, drop_first=True))
        out += [docstring_markdown(own_doc(cls)), ""]
    notes = _protocols(cls)
    if notes:
        out += [f"Also {' and '.join(notes)}.", ""]
    properties, methods, attributes = class_members(cls)
    if attributes:
        out += ["**Attributes**", ""]
        out += [f"- `{name}`" + (f": {_inline(comment)}" if comment else "") for name, comment in attributes]
        out.append("")
    if properties:
        out += ["**Properties**", "", *properties]
    if methods:
        out += ["**Methods**", "", *methods]
    return out


# -- the document ------------------------------------------------------------------------


def _anchor(qualified: str) -> str:
    return qualified.replace(".", "-").replace("_", "").lower()


def document_object(qualified: str, obj: Any, first_seen: dict[int, str]) -> list[str]:
    out = [f'<a id="{_anchor(qualified)}"></a>', "", f"### `{qualified}`", ""]
    if id(obj) in first_seen:
        original = first_seen[id(obj)]
        return out + [f"The same object as [`{original}`](#{_anchor(original)}).", ""]
    first_seen[id(obj)] = qualified
    name = qualified.rsplit(".", 1)[1]
    if isinstance(obj, type):
        return out + document_class(qualified, obj)
    if inspect.isfunction(obj):
        return out + [*code(format_signature(name, obj)), docstring_markdown(own_doc(obj)), ""]
    return out + [f"A `{type(obj).__name__}` constant.", ""]


def generate() -> str:
    sys.path.insert(0, ROOT)
    out = [
        "# sdplite API reference",
        "",
        "<!-- Generated by docs/gen_api.py from the docstrings: do not edit by hand. -->",
        "<!-- Regenerate with `python docs/gen_api.py`; tests/test_docs.py checks it is current. -->",
        "",
        "The public API, from the docstrings. The user guide (`guide.md`) explains how the pieces fit.",
        "",
    ]
    toc: list[str] = []
    body: list[str] = []
    first_seen: dict[int, str] = {}
    for module_name, names in SECTIONS:
        module = importlib.import_module(module_name)
        chosen = sorted(names if names is not None else module.__all__, key=lambda n: (n.lower(), n))
        toc.append(f"- [`{module_name}`](#{_anchor(module_name)})")
        body += [f'<a id="{_anchor(module_name)}"></a>', "", f"## `{module_name}`", ""]
        body += [docstring_markdown(own_doc(module)), ""]
        for name in chosen:
            qualified = f"{module_name}.{name}"
            toc.append(f"  - [`{name}`](#{_anchor(qualified)})")
            body += document_object(qualified, getattr(module, name), first_seen)
    text = "\n".join(out + toc + [""] + body)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.rstrip("\n") + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/api.md is stale")
    args = parser.parse_args(argv)
    text = generate()
    try:
        with open(OUTPUT, encoding="utf-8") as handle:
            current = handle.read()
    except FileNotFoundError:
        current = ""
    if args.check:
        if current == text:
            print("docs/api.md is up to date")
            return 0
        diff = difflib.unified_diff(
            current.splitlines(), text.splitlines(), "docs/api.md", "generated", lineterm="", n=1
        )
        print("\n".join(list(diff)[:60]))
        print("docs/api.md is stale: run `python docs/gen_api.py`", file=sys.stderr)
        return 1
    if current != text:
        with open(OUTPUT, "w", encoding="utf-8") as handle:
            handle.write(text)
        print("wrote docs/api.md")
    else:
        print("docs/api.md is already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
