"""Write the generated reference pages, ``docs/reference/cli.md`` and ``docs/reference/config.md``.

``cli.md`` lists every ``medseg`` subcommand and its arguments, read from the argparse parser that
:func:`medseg.cli.build_parser` builds; ``config.md`` lists every config section and key (type,
default, allowed range, the section's docstring), read from the dataclasses of :mod:`medseg.config`.
The output depends only on the code, so it can be checked in and compared::

    python tools/gen_reference.py          # rewrite both pages
    python tools/gen_reference.py --check  # exit 1, naming each page that is out of date

It imports ``medseg.cli`` and ``medseg.config`` from the checkout it sits in (not torch).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
import sys
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Union

import yaml  # medseg.config reads configs with it

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DIR = Path("docs") / "reference"
CLI_PAGE = REFERENCE_DIR / "cli.md"
CONFIG_PAGE = REFERENCE_DIR / "config.md"
GENERATOR = "tools/gen_reference.py"


def _import_medseg() -> None:
    """Make ``import medseg`` find this checkout's package, ahead of any installed copy."""
    root = str(ROOT)
    if sys.path[:1] != [root]:
        sys.path.insert(0, root)


def _cell(text: str) -> str:
    """``text`` as one Markdown table cell: one line, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def _plain(text: str) -> str:
    """``text`` safe as Markdown prose: ``<`` outside code spans escaped, so ``<case>`` is not read as HTML."""
    parts = re.split(r"(`[^`]*`)", text)
    return "".join(part if i % 2 else part.replace("<", "&lt;") for i, part in enumerate(parts))


def _code(text: str) -> str:
    """``text`` as inline code (doubled backticks where it holds one)."""
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _rst_to_markdown(text: str) -> str:
    """Docstring markup as Markdown: ``:class:`~a.b.C``` becomes ```C```, double backticks single."""

    def role(match: re.Match[str]) -> str:
        target = match.group(1)
        return f"`{target.rsplit('.', 1)[-1]}`" if target.startswith("~") else f"`{target}`"

    text = re.sub(r":[a-z]+:`([^`]+)`", role, text)
    return _plain(text.replace("``", "`"))


# --- the command line -------------------------------------------------------------------------


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """``(name, help, parser)`` of each subcommand of ``parser``, in the order they were added."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            found += [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return found


def _arguments(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The documented arguments of ``parser``: positionals first, then options, each in their order."""
    actions = [
        a
        for a in parser._actions
        if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)) and a.help != argparse.SUPPRESS
    ]
    return [a for a in actions if not a.option_strings] + [a for a in actions if a.option_strings]


def _value(action: argparse.Action) -> str:
    """How the argument's value is written on the command line, e.g. ``D H W`` or ``[AXIS ...]``."""
    if action.nargs == 0:
        return ""
    if action.metavar is not None:
        names = list(action.metavar) if isinstance(action.metavar, tuple) else [action.metavar]
    elif action.choices is not None:
        names = ["{" + ",".join(str(c) for c in action.choices) + "}"]
    else:
        names = [action.dest.upper() if action.option_strings else action.dest]
    if isinstance(action.nargs, int):
        return " ".join(names[i % len(names)] for i in range(action.nargs))
    one = names[0]
    return {None: one, "?": f"[{one}]", "*": f"[{one} ...]", "+": f"{one} [{one} ...]"}.get(action.nargs, one)


def _type_name(action: argparse.Action) -> str:
    """What the value is (``path``, ``integer``, ...), and ``repeatable`` for an option that may be given again."""
    if action.nargs == 0:
        return "flag"
    kind = action.type
    names = {None: "text", Path: "path", int: "integer", float: "number", str: "text"}
    text = names.get(kind) or getattr(kind, "__name__", "text")
    return f"{text}, repeatable" if isinstance(action, argparse._AppendAction) else text


def _default(action: argparse.Action) -> str:
    if action.required:
        return "required"
    default = action.default
    if action.nargs == 0 or default is None or default == [] or default is argparse.SUPPRESS:
        return ""
    if isinstance(default, (list, tuple)):
        return _code(" ".join(str(d) for d in default))
    return _code(str(default))


def _help(action: argparse.Action, prog: str) -> str:
    text = _plain(action.help or "")
    if "%" in text:  # argparse's own expansion: %(default)s, %(prog)s, ...
        text = text % {**vars(action), "prog": prog}
    if action.choices is not None and action.metavar is not None:
        choices = ", ".join(_code(str(c)) for c in action.choices)
        text = f"{text} ({action.metavar}: one of {choices})" if text else f"one of {choices}"
    return text


def _usage(prog: str, parser: argparse.ArgumentParser) -> str:
    parts = [prog]
    for action in _arguments(parser):
        value = _value(action)
        if action.option_strings:
            text = " ".join(filter(None, [action.option_strings[0], value]))
            parts.append(text if action.required else f"[{text}]")
        else:
            parts.append(value)
    if _subcommands(parser):
        parts.append("COMMAND ...")
    return " ".join(parts)


def _argument_table(parser: argparse.ArgumentParser, prog: str) -> list[str]:
    rows = []
    for action in _arguments(parser):
        name = ", ".join(action.option_strings) or action.metavar or action.dest
        value = _value(action)
        rows.append([_code(name), _code(value) if value else "", _type_name(action), _default(action)])
        rows[-1].append(_help(action, prog))
    return _table(["argument", "value", "type", "default", "help"], rows) if rows else []


def _anchor(title: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def _walk(prog: str, parser: argparse.ArgumentParser, help_text: str, depth: int) -> Iterator[tuple]:
    """``(prog, parser, help, depth)`` for ``parser`` and every subcommand under it, depth first."""
    yield prog, parser, help_text, depth
    for name, sub_help, sub in _subcommands(parser):
        yield from _walk(f"{prog} {name}", sub, sub_help, depth + 1)


def render_cli() -> str:
    """The Markdown of ``docs/reference/cli.md``."""
    _import_medseg()
    from medseg.cli import build_parser

    parser = build_parser()
    commands = list(_walk("medseg", parser, parser.description or "", 0))
    lines = [
        "# Command-line reference",
        "",
        f"<!-- Generated by {GENERATOR} from medseg/cli.py (build_parser); do not edit by hand. -->",
        "",
        f"Every `medseg` subcommand and its arguments, as `medseg/cli.py` defines them. `python {GENERATOR}`"
        " rewrites this page; a test fails when it is out of date. `medseg COMMAND --help` prints the same.",
        "",
        "| command | what it does |",
        "| --- | --- |",
    ]
    for prog, sub, help_text, _depth in commands[1:]:
        if not _subcommands(sub):
            lines.append(f"| [{_code(prog)}](#{_anchor(prog)}) | {_cell(help_text)} |")
    for prog, sub, help_text, depth in commands:
        lines += ["", "#" * (max(depth, 1) + 1) + (" Global options" if depth == 0 else f" {prog}"), ""]
        if help_text:
            lines += [help_text[0].upper() + help_text[1:] + ("" if help_text.endswith(".") else "."), ""]
        lines += ["```text", _usage(prog, sub), "```"]
        table = _argument_table(sub, prog)
        if table:
            lines += ["", *table]
        if depth == 0:
            lines += ["", "Options before the subcommand (`medseg --debug train ...`) apply to every command."]
    return "\n".join(lines) + "\n"


# --- the configuration ------------------------------------------------------------------------


def _describe_type(tp: Any) -> str:
    """A config value's type in words: ``int``, ``list of float or null``, ``mapping of str to float``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        text = " or ".join(_describe_type(a) for a in inner)
        return f"{text} or null" if len(inner) < len(args) else text
    if origin is Literal:
        return " or ".join(sorted({type(a).__name__ for a in args}))
    if origin is list:
        return f"list of {_describe_type(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping of {_describe_type(args[0])} to {_describe_type(args[1])}" if args else "mapping"
    if tp is Any:
        return "any"
    return getattr(tp, "__name__", str(tp))


def _yaml(value: Any) -> str:
    """``value`` as it would be written in a YAML config (a string quoted where YAML would read another type)."""
    if isinstance(value, str):
        return value if yaml.safe_load(value) == value else json.dumps(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in value.items()) + "}"
    return str(value)


def _field_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def _members(tp: Any) -> list[Any]:
    """The types a union allows, ``None`` left out; any other type alone."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        return [a for a in typing.get_args(tp) if a is not type(None)]
    return [tp]


def _allowed(tp: Any, f: dataclasses.Field) -> str:
    """The values a key takes: a ``Literal``'s choices, and the field's ``range`` metadata."""
    parts = [
        "one of " + ", ".join(_code(_yaml(a)) for a in typing.get_args(t))
        for t in _members(tp)
        if typing.get_origin(t) is Literal
    ]
    allowed = f.metadata.get("range")
    if allowed is not None:
        each = any(typing.get_origin(t) in (list, dict) for t in _members(tp))
        parts.append(f"{allowed} (each)" if each else str(allowed))
    return "; ".join(parts)


def _key_table(cls: type) -> list[str]:
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            continue
        default = _yaml(_field_default(f))
        rows.append([_code(f.name), _describe_type(tp), _code(default) if default else "", _allowed(tp, f)])
    return _table(["key", "type", "default", "allowed"], rows)


def render_config() -> str:
    """The Markdown of ``docs/reference/config.md``."""
    _import_medseg()
    from medseg.config import Config

    hints = typing.get_type_hints(Config)
    sections = [(f.name, hints[f.name]) for f in dataclasses.fields(Config) if dataclasses.is_dataclass(hints[f.name])]
    lines = [
        "# Configuration reference",
        "",
        f"<!-- Generated by {GENERATOR} from medseg/config.py; do not edit by hand. -->",
        "",
        "Every section and key of a medseg config file, with its type, default and allowed values, as the"
        f" dataclasses in `medseg/config.py` define them. `python {GENERATOR}` rewrites this page; a test fails"
        " when it is out of date. `--set section.key=value` overrides any key (the value is parsed as YAML).",
        "An unknown key, a value of the wrong type or a number outside its range is an error naming the key.",
        "",
        "| section | what |",
        "| --- | --- |",
        "| [top level](#top-level) | " + _cell(_summary(Config)) + " |",
    ]
    lines += [f"| [{_code(name)}](#{name}) | {_cell(_summary(cls))} |" for name, cls in sections]
    lines += ["", "## Top level", "", *_key_table(Config)]
    for name, cls in sections:
        lines += ["", f"## {name}", "", _rst_to_markdown(inspect.cleandoc(cls.__doc__ or "")), "", *_key_table(cls)]
    return "\n".join(lines) + "\n"


def _summary(cls: type) -> str:
    """The first sentence of a class's docstring."""
    text = _rst_to_markdown(" ".join((cls.__doc__ or "").split()))
    match = re.match(r"(.+?\.)(\s|$)", text)
    return match.group(1) if match else text


# --- writing and checking ---------------------------------------------------------------------


def render_all() -> dict[Path, str]:
    """Each generated page (a path relative to the repository root) and its text."""
    return {CLI_PAGE: render_cli(), CONFIG_PAGE: render_config()}


def stale_pages(root: Path = ROOT) -> list[Path]:
    """The generated pages under ``root`` that are missing or differ from what the code gives."""
    stale = []
    for path, text in render_all().items():
        target = root / path
        if not target.is_file() or target.read_text(encoding="utf-8") != text:
            stale.append(path)
    return stale


def write_pages(root: Path = ROOT) -> list[Path]:
    """Write every generated page under ``root``; returns the ones that changed."""
    changed = []
    for path, text in render_all().items():
        target = root / path
        if target.is_file() and target.read_text(encoding="utf-8") == text:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8", newline="\n")
        changed.append(path)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a generated page is out of date")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_pages()
        for path in stale:
            print(f"{path.as_posix()} is out of date: run python {GENERATOR}", file=sys.stderr)
        return 1 if stale else 0
    for path in write_pages():
        print(f"wrote {path.as_posix()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
