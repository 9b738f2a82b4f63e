"""One source of truth for the command line: defaults from the config dataclasses, one meaning per
flag name, the same --device everywhere, docs/cli.md generated from the parsers, README's flags
real, backbone and SSL names from their registries."""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

from SFRSegmenterLib.cli import build_parser
from SFRSegmenterLib.device import DEVICES

ROOT = Path(__file__).resolve().parents[1]


def _commands() -> dict:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _options(parser) -> dict:
    return {flag: a for a in parser._actions for flag in a.option_strings}


def test_docs_cli_reference_is_current():
    spec = importlib.util.spec_from_file_location("make_cli_reference", ROOT / "docs" / "make_cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (ROOT / "docs" / "cli.md").read_text(encoding="utf-8") == module.render(), \
        "docs/cli.md is stale: run python docs/make_cli_reference.py"


def _heading_flags(path: Path, level: str) -> int:
    """Every `sfr COMMAND --flag` in the file's headings of ``level`` names a real flag; returns how many."""
    text = path.read_text(encoding="utf-8")
    commands = _commands()
    checked = 0
    for heading in re.findall(rf"^{level} (.+)$", text, flags=re.M):
        for usage in re.findall(r"`sfr ([a-z]+)([^`]*)`", heading):
            name, rest = usage
            assert name in commands, heading
            known = _options(commands[name])
            for flag in re.findall(r"--[a-z][a-z0-9-]*", rest):
                assert flag in known, f"{path.name}: sfr {name} has no {flag}"
                checked += 1
    return checked


def test_every_flag_readme_names_exists():
    assert _heading_flags(ROOT / "README.md", "###") > 40
    # the full command descriptions moved out of the README keep their usage headings checked too
    assert _heading_flags(ROOT / "docs" / "commands.md", "##") > 80


def test_defaults_come_from_the_config_dataclasses():
    from SFRSegmenterLib.retrain.config import RetrainConfig
    from SFRSegmenterLib.sam.config import FinetuneConfig

    parser = build_parser()
    f = vars(parser.parse_args(["finetune", "P"]))
    for field in ("iterations", "batch_size", "lora_rank", "lr", "seed", "save_every", "device"):
        assert f[field] == getattr(FinetuneConfig(), field), field
    r = vars(parser.parse_args(["retrain", "P"]))
    for field in ("ssl", "network", "sam_weight", "iterations", "lr", "norm", "dropout", "augment", "seed",
                  "device", "save_every"):
        assert r[field] == getattr(RetrainConfig(), field), field
    assert tuple(r["batch"]) == (RetrainConfig().labeled_bs, RetrainConfig().unlabeled_bs)
    # the pseudo-labeling defaults are the library function's
    from SFRSegmenterLib.pseudolabel import pseudolabel

    p = vars(parser.parse_args(["pseudolabel", "P"]))
    sig = inspect.signature(pseudolabel).parameters
    assert p["overlap"] == sig["overlap"].default and p["window_batch"] == sig["batch_size"].default


def test_the_help_says_the_real_defaults():
    from SFRSegmenterLib.retrain.config import PAPER_LR_STEP, RetrainConfig

    options = _options(_commands()["retrain"])
    assert f"(default {RetrainConfig().iterations})" in options["--iterations"].help
    assert "does not" in options["--iterations"].help  # the lr step is not scaled (it was, once)
    assert f"default {PAPER_LR_STEP}" in options["--lr-step"].help


def test_device_has_the_same_choices_in_every_command():
    seen = 0
    for name, parser in _commands().items():
        action = _options(parser).get("--device")
        if action is None:
            continue
        seen += 1
        assert action.choices is not None, f"sfr {name} --device takes free text"
        assert tuple(action.choices) == DEVICES, name
        assert "cuda:1" in action.choices and "gpu" not in action.choices
    assert seen >= 4


def test_one_meaning_per_flag_name():
    """--json prints; inference batching is --window-batch; --batch-size is stage F's training batch."""
    for name, parser in _commands().items():
        options = _options(parser)
        if "--json" in options:
            action = options["--json"]
            assert action.nargs == 0 or action.const is True, f"sfr {name} --json takes a value"
            assert "print" in action.help, name
        if "--batch-size" in options and options["--batch-size"].help != argparse.SUPPRESS:
            assert name == "finetune", f"sfr {name} --batch-size"
        if "--cases" in options and options["--cases"].help != argparse.SUPPRESS:
            assert options["--cases"].nargs == "+", f"sfr {name} --cases takes case names"


def test_old_spellings_still_work(tmp_path):
    parser = build_parser()
    assert parser.parse_args(["pseudolabel", "P", "--batch-size", "3"]).window_batch == 3
    assert parser.parse_args(["init", "P", "--images", "I", "--cases", "order.txt"]).case_list == "order.txt"
    args = parser.parse_args(["evaluate", "--pred", "a", "--gt", "b", "--json", "x.json"])
    assert args.json == "x.json"  # still written to x.json (the command reads it as --out)
    assert parser.parse_args(["evaluate", "--pred", "a", "--gt", "b", "--json"]).json is True


def test_names_come_from_the_registries():
    from SFRSegmenterLib import runcontrol, sam
    from SFRSegmenterLib.retrain import names
    from SFRSegmenterLib.retrain.ssl import SSL_METHODS
    from SFRSegmenterLib.sam import checkpoints, registry

    assert sam.BACKBONE_NAMES == tuple(registry.BACKBONES)
    assert set(runcontrol.USER_BACKBONES) == {n for n, s in registry.BACKBONES.items() if not s.test_only}
    assert tuple(SSL_METHODS) == names.SSL_NAMES == tuple(runcontrol.SSL_METHODS)
    assert checkpoints.KNOWN_CHECKPOINTS["sam_vit_b_01ec64.pth"][0] == registry.BACKBONES["vit_b"].checkpoint_sha256
    options = _options(_commands()["finetune"])
    assert tuple(options["--backbone"].choices) == sam.BACKBONE_NAMES


def test_the_command_line_loads_without_torch_or_scipy():
    """Every ``sfr`` process parses its command line first: torch and scipy (scipy.ndimage was
    about half of the start-up of ``sfr status``) are imported only by the commands that compute."""
    code = ("import sys; from SFRSegmenterLib.cli import build_parser; build_parser(); "
            "print([m for m in ('torch', 'scipy') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("command", ["finetune", "retrain", "pseudolabel"])
def test_bad_device_is_one_line(sfr, command):
    proc = sfr(command, "P", "--device", "gpu")
    assert proc.returncode == 2 and "--device" in proc.stderr and "Traceback" not in proc.stderr


def test_stage_f_doc_tables_name_real_flags():
    commands = _commands()
    section = None
    checked = 0
    for line in (ROOT / "docs" / "stage-f.md").read_text(encoding="utf-8").splitlines():
        heading = re.match(r"^## `sfr ([a-z]+)", line)
        if heading or line.startswith("## "):
            section = heading.group(1) if heading else None
        elif section and line.startswith("| `--") and "(run)" not in line:
            flag = re.match(r"\| `(--[a-z0-9-]+)", line).group(1)
            assert flag in _options(commands[section]), f"docs/stage-f.md: sfr {section} has no {flag}"
            checked += 1
    assert checked > 20
