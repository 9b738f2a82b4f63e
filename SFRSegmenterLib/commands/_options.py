"""Options shared by the ``sfr`` commands: one flag name for one idea, defaults from the configs.

A command states what an option means once, here, and reads its default from the config
dataclass the option fills (``FinetuneConfig``, ``RetrainConfig``, ``RunConfig``), so a help
text can never disagree with what a run does::

    from ._options import add_device, add_json, default, with_default
    p.add_argument("--lr", type=float, default=default(FinetuneConfig, "lr"),
                   help=with_default("AdamW learning rate", FinetuneConfig, "lr"))
    add_device(p)

Nothing here imports torch: ``sfr --help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import re

from ..device import DEVICES


class _DeviceChoices(tuple):
    """:data:`DEVICES`, and ``cuda:N`` for one GPU of several (shown as ``{auto,cpu,cuda,mps}``)."""

    def __contains__(self, value) -> bool:
        return tuple.__contains__(self, value) or bool(re.fullmatch(r"cuda:\d+", str(value)))


DEVICE_CHOICES = _DeviceChoices(DEVICES)
DEVICE_HELP = "compute device: auto picks cuda, then mps, then cpu; cuda:N picks one GPU"


def default(config, name: str):
    """The default value of field ``name`` of the dataclass ``config`` (a class or an instance)."""
    cls = config if isinstance(config, type) else type(config)
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            raise KeyError(f"{cls.__name__}.{name} has no default")
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def show(value) -> str:
    """A default as a user types it: ``80 112 112``, ``0.001``, ``none``."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (tuple, list)):
        return " ".join(show(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def with_default(text: str, config, name: str, none: str | None = None) -> str:
    """``text`` followed by ``(default <the field's default>)``; ``none`` words a None default."""
    value = default(config, name)
    shown = none if (value is None and none) else show(value)
    return f"{text} (default {shown})"


def add_device(parser, *, default: str | None = "auto", help: str | None = None) -> None:
    """``--device`` with the same choices in every command (``default=None``: "not given")."""
    text = help or DEVICE_HELP
    if default is not None:
        text += f" (default {default})"
    parser.add_argument("--device", choices=DEVICE_CHOICES, default=default, metavar="{" + ",".join(DEVICES) + "}",
                        help=text)


def add_threads(parser) -> None:
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")


def add_json(parser, what: str) -> None:
    """``--json``: print ``what`` as JSON on stdout (every command; files are named with ``--out``)."""
    parser.add_argument("--json", action="store_true", help=f"print {what} as JSON on stdout")


def print_result(args, data, text) -> int:
    """What a command prints: ``data`` as JSON with ``--json``, else ``text`` (a string or a
    callable giving one: built only when shown).  Under torchrun only rank 0 prints (every rank
    has the whole result).  Returns 0, the command's exit status."""
    import json

    from ..shard import is_main_process

    if not is_main_process():
        return 0
    if getattr(args, "json", False) is True:
        print(json.dumps(data, indent=2))
    else:
        print(text() if callable(text) else text)
    return 0


def add_seed(parser, config, name: str = "seed") -> None:
    parser.add_argument("--seed", type=int, default=default(config, name),
                        help=with_default("random seed", config, name))


def add_window_batch(parser, default: int) -> None:
    """``--window-batch``: inference windows per forward pass (memory, not results).  Training
    batches are ``--batch-size`` (stage F: volume crops) and ``--batch`` (stage R: labeled and
    unlabeled crops).  ``--batch-size``/``--batch`` keep working here, hidden, for old scripts."""
    parser.add_argument("--window-batch", type=int, default=default, metavar="N",
                        help=f"inference windows per forward pass: memory and speed, not the method (default {default})")
    for old in ("--batch-size", "--batch"):
        parser.add_argument(old, type=int, dest="window_batch", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def add_crop(parser, text: str) -> None:
    parser.add_argument("--crop", type=int, nargs=3, metavar=("D", "H", "W"), help=text)


OVERWRITE_HELP = ("replace existing files in the output that sfr did not write (never a project's images "
                  "or labels); without it such a file stops the command before any work")


def add_overwrite(p) -> None:
    """``--overwrite``: the one way to let a command replace files it did not write (:mod:`..io.outputs`)."""
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
