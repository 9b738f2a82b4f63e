"""``sfr run --warm-start``: stage F and stage R start from a finished run's models.

Real subprocesses and files, the tiny test SAM; the command line is the one the Slicer panel
builds (:mod:`SFRSegmenterLib.runcontrol`), run through the engine's real parser.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from SFRSegmenterLib.run.config import RunConfig, finetune_config, load_run_config, retrain_config
from SFRSegmenterLib.run.warmstart import short_schedule, warm_iterations
from SFRSegmenterLib.runcontrol import RunSettings, config_of, start_command
from test_run_pipeline import TINY, latest, make_project


def runs_of(root):
    return sorted(p.name for p in (root / "runs").iterdir() if p.is_dir())


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_run_copy):
    return tiny_run_copy(tmp_path_factory.mktemp("warm") / "proj")


def test_the_short_schedule_is_a_fifth_of_the_source_runs_unless_given(finished):
    root, first = finished
    source = load_run_config(first)
    ran = finetune_config(source).iterations, retrain_config(source).iterations
    cfg = RunConfig(warm_start_from=first.name)
    short_schedule(cfg, first)
    assert (cfg.iterations_sam, cfg.iterations_vnet) == (warm_iterations(ran[0]), warm_iterations(ran[1]))
    assert warm_iterations(6000) == 1200 and warm_iterations(3) == 1
    given = RunConfig(warm_start_from=first.name, iterations_vnet=7, sam_options={"iterations": 9})
    short_schedule(given, first)
    assert given.iterations_vnet == 7 and given.iterations_sam is None


def test_a_frozen_encoder_warm_start_caches_a_fifth_of_the_mosaics(tmp_path, sfr, sample_dir):
    """A frozen-encoder source run (the CPU budget) with 10 cached mosaics: the warm start caches 2,
    unless the command line gives its own number."""
    from test_run_pipeline import TINY, latest, make_project

    root = make_project(tmp_path / "proj", sample_dir)
    sfr("run", root, *TINY, "--sam-option", "lora_rank=0", "--sam-option", "embedding_cache=10", check=True)
    first = latest(root)
    cfg = RunConfig(warm_start_from=first.name)
    short_schedule(cfg, first)
    assert cfg.sam_options["embedding_cache"] == warm_iterations(10) == 2
    given = RunConfig(warm_start_from=first.name, sam_options={"embedding_cache": 5})
    short_schedule(given, first)
    assert given.sam_options["embedding_cache"] == 5
    sfr("run", root, *TINY, "--sam-option", "lora_rank=0", "--warm-start", check=True)
    warm = latest(root)
    assert finetune_config(load_run_config(warm)).embedding_cache == 2


def test_a_warm_start_from_a_budget_run_runs_a_fifth_of_what_that_run_ran(finished, tmp_path):
    """A run with no tuning options takes its schedule from the budget (config.json records the
    choice, not iterations): the warm start's fifth is of the budget's iterations, not of the
    stages' defaults (the paper's 6000)."""
    from SFRSegmenterLib.run.budget import effective

    _, first = finished
    recorded = json.loads((first / "config.json").read_text())
    assert recorded["budget_choice"]["settings"]["iterations_sam"] == 300
    # the same run's record as a run without --iterations-* / --sam-option writes it
    budget_run = tmp_path / first.name
    budget_run.mkdir()
    (budget_run / "config.json").write_text(json.dumps({**recorded, "iterations_sam": None, "iterations_vnet": None,
                                                        "sam_options": {}}))
    ran = effective(load_run_config(budget_run))
    assert finetune_config(ran).iterations == 300 and retrain_config(ran).iterations == 400  # the CPU budget
    cfg = RunConfig(warm_start_from=first.name)
    short_schedule(cfg, budget_run)
    assert (cfg.iterations_sam, cfg.iterations_vnet) == (60, 80)
    assert cfg.sam_options["embedding_cache"] == warm_iterations(finetune_config(ran).embedding_cache)


def test_warm_start_alone_continues_the_source_runs_models(tmp_path, sfr, sample_dir):
    """``--warm-start`` without the source's tuning options (a 4-filter V-Net, a tiny SAM): the run
    takes them from the source (it failed in stage R, after stage F, on the budget's 8 filters)."""
    root = make_project(tmp_path / "proj", sample_dir)
    sfr("run", root, *TINY, check=True)
    first = latest(root)
    proc = sfr("run", root, "--backbone", "tiny_test", "--device", "cpu", "--warm-start", "--no-report")
    assert proc.returncode == 0, proc.stderr
    warm = load_run_config(latest(root))
    source = load_run_config(first)
    assert retrain_config(warm).filters == retrain_config(source).filters == 4
    assert warm.vnet_options["filters"] == 4 and warm.warm_start_from == first.name
    runs = sorted(p.name for p in (root / "runs").iterdir())
    for extra, words in ((["--vnet-option", "filters=8"], ("V-Net", "filters")),
                         (["--sam-option", "lora_rank=2"], ("LoRA rank", "lora_rank"))):
        given = sfr("run", root, "--backbone", "tiny_test", "--device", "cpu", "--warm-start", first.name, *extra)
        lines = given.stderr.strip().splitlines()  # what the user gives wins, and is refused before any work
        assert given.returncode == 2 and len(lines) == 1 and all(w in lines[0] for w in words), given.stderr
        assert sorted(p.name for p in (root / "runs").iterdir()) == runs


def test_warm_start_through_the_panels_command_line(finished, sfr):
    root, first = finished
    settings = RunSettings(backbone="tiny_test", sfr_plus=False, device="cpu",
                           sam_options={"lr": 1e-30}, vnet_options={"filters": 4, "lr": 1e-30},
                           warm_start="latest", report=False)
    assert config_of(settings)["warm_start_from"] == "latest"
    proc = sfr(*start_command(root, settings, detach=False, progress="none"))
    assert proc.returncode == 0, proc.stderr
    second = latest(root)
    assert second != first
    config = json.loads((second / "config.json").read_text())
    assert config["warm_start_from"] == first.name
    assert (config["iterations_sam"], config["iterations_vnet"]) == (1, 1)  # a fifth of the first run's 3, at least 1
    # other iterations and learning rates, the same models on the same machine: nothing timed again
    est = [json.loads(line) for line in (second / "events.jsonl").read_text().splitlines()]
    est = next(e for e in est if e["event"] == "estimate")
    assert est["calibration_reused"] == ["sam", "vnet"], est
    # with a learning rate far below float32 resolution the warm-started models are the models they started from
    old_sam = json.loads((first / "stages" / "finetune-r0" / "sam-model.json").read_text())
    new_sam = json.loads((second / "stages" / "finetune-r0" / "sam-model.json").read_text())
    assert new_sam["init_from"] == old_sam["model_id"]
    assert new_sam["model_id"] == old_sam["model_id"]
    old = torch.load(first / "vnet" / "model.pt", weights_only=True)["state_dict"]
    new = torch.load(second / "vnet" / "model.pt", weights_only=True)["state_dict"]
    weights = [k for k in old if k.endswith("weight") and old[k].dtype.is_floating_point]
    assert weights and all(torch.equal(old[k], new[k]) for k in weights)


def test_refusals_write_nothing(finished, sfr, tmp_path, sample_dir):
    root, first = finished
    before = runs_of(root)

    def refused(*args, needle, where=root):
        listing = runs_of(where) if (where / "runs").is_dir() else None
        proc = sfr("run", where, *TINY, *args)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], proc.stderr
        assert (runs_of(where) if (where / "runs").is_dir() else None) == listing

    other = make_project(tmp_path / "other", sample_dir)
    refused("--warm-start", str(first), needle="another project", where=other)
    refused("--warm-start", "20200101-000000-dead", needle="no run")
    unfinished = root / "runs" / "20200101-000000-beef"
    shutil.copytree(first, unfinished)
    status = json.loads((unfinished / "status.json").read_text())
    (unfinished / "status.json").write_text(json.dumps({**status, "state": "cancelled"}))
    refused("--warm-start", unfinished.name, needle="not finished")
    shutil.rmtree(unfinished)
    assert runs_of(root) == before
    proc = sfr("run", root, "--resume", "--warm-start")
    assert proc.returncode == 2 and "--warm-start" in proc.stderr


def test_a_run_with_other_classes_is_refused(finished, sfr, tmp_path, sample_dir):
    from SFRSegmenterLib.manifest import init_project

    _, first = finished
    four = tmp_path / "four"
    init_project(four, sample_dir / "images", sample_dir / "labels", labeled=2, classes="4")
    copied = four / "runs" / first.name
    shutil.copytree(first, copied)
    config = json.loads((copied / "config.json").read_text())
    (copied / "config.json").write_text(json.dumps({**config, "project": str(four.resolve())}))
    proc = sfr("run", four, *TINY, "--warm-start")
    assert proc.returncode == 2 and "classes" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert runs_of(four) == [first.name]
