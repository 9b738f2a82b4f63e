"""Write docs/cli.md, the full option reference of every ``sfr`` command, from the real parsers.

    python docs/make_cli_reference.py           # (re)write docs/cli.md
    python docs/make_cli_reference.py --check   # exit 1 when docs/cli.md is not current

``Testing/test_cli_contract.py`` runs the check, so the reference cannot drift from the command
line.  docs/commands.md explains what each command does; this file lists every option.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "docs" / "cli.md"


def _subparsers(parser: argparse.ArgumentParser) -> dict:
    """{command: (parser, its one-line help)}."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            return {name: (sub, helps.get(name, "")) for name, sub in action.choices.items()}
    return {}


def _text(text) -> str:
    return " ".join(str(text or "").replace("%%", "%").split()).replace("|", "\\|")


def _names(action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest.upper()}`"
    value = ""
    if action.nargs != 0:
        if action.choices is not None:
            value = " {" + ",".join(map(str, action.choices)) + "}"
        elif isinstance(action.metavar, tuple):
            value = " " + " ".join(action.metavar)
        else:
            value = " " + (action.metavar or action.dest.upper())
        if action.nargs == "?":
            value = f" [{value.strip()}]"
        elif action.nargs in ("+", "*"):
            value += " ..."
    return ", ".join(f"`{flag}{value}`" for flag in action.option_strings)


def render() -> str:
    sys.path.insert(0, str(ROOT))
    from SFRSegmenterLib.cli import build_parser
    from SFRSegmenterLib.events import MODES

    parser = build_parser()
    out = [
        "# `sfr` command reference",
        "",
        "Generated from the parsers by `python docs/make_cli_reference.py`; do not edit by hand",
        "(`Testing/test_cli_contract.py` fails when it is not current). [commands.md](commands.md)",
        "explains what each command does, writes and refuses.",
        "",
        f"Global options, before the command: `sfr [--progress {{{','.join(MODES)}}}] COMMAND ...`.",
        "",
    ]
    for name, (sub, summary) in _subparsers(parser).items():
        out += [f"## `sfr {name}`", "", _text(sub.description or summary), "", "| option | meaning |", "| --- | --- |"]
        for action in sub._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            meaning = _text(action.help)
            if action.required:
                meaning = "required; " + meaning
            out.append(f"| {_names(action)} | {meaning} |")
        out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when docs/cli.md is not current")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        if current != text:
            print(f"{TARGET} is not current: run python docs/make_cli_reference.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
