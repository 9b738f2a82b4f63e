"""Budgets and the estimate: the choice against fake device descriptions (a pure function), the
command line through the real parser (also as the Slicer module builds it), bad input refused
with nothing written, and the estimate against a real short run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from SFRSegmenterLib.run import budget
from SFRSegmenterLib.run.config import RunConfig

from conftest import run_sfr

CPU2 = {"kind": "cpu", "cores": 2, "threads": 2}
SAMPLE_PROJECT = {"labeled": 2, "unlabeled": 10, "mean_voxels": 35 * 50 * 35}


# --------------------------------------------------------------------------- the choice (pure)

@pytest.mark.parametrize("device, name", [
    ({"kind": "cuda", "name": "NVIDIA H100", "memory_gib": 79.2, "count": 1}, "paper"),
    ({"kind": "cuda", "name": "RTX 3080", "memory_gib": 10.0, "count": 1}, "paper"),
    ({"kind": "cuda", "name": "GTX 1050", "memory_gib": 4.0, "count": 1}, "fast"),
    ({"kind": "mps", "name": "Apple GPU"}, "fast"),
    (CPU2, "fast"),
    ({"kind": "cpu", "cores": 64, "threads": 64}, "fast"),
])
def test_auto_picks_by_device(device, name):
    choice = budget.choose("auto", device, SAMPLE_PROJECT)
    assert choice["name"] == name and choice["budget"] == "auto"
    assert choice["why"].startswith("auto:")
    assert choice["settings"] == budget.preset(name, SAMPLE_PROJECT)
    assert choice == budget.choose("auto", device, SAMPLE_PROJECT)  # pure


def test_fast_on_cpu_is_the_demo_schedule_and_scales_the_cache_with_the_labeled_cases():
    s = budget.choose("auto", CPU2, SAMPLE_PROJECT)["settings"]
    assert (s["backbone"], s["iterations_sam"], s["iterations_vnet"], s["pseudo_overlap"]) == ("lite_medsam", 300, 400, 0.0)
    assert s["sam_options"] == {"lora_rank": 0, "embedding_cache": 64, "warmup": 50}
    assert s["vnet_options"] == {"filters": 8, "dropout": 0.0}
    big = budget.choose("fast", CPU2, {**SAMPLE_PROJECT, "labeled": 5})
    assert big["settings"]["sam_options"]["embedding_cache"] == 160 and "160 mosaics" in big["why"]
    assert budget.choose("fast", CPU2, {**SAMPLE_PROJECT, "labeled": 40})["settings"]["sam_options"]["embedding_cache"] == 256
    assert budget.choose("paper", CPU2, SAMPLE_PROJECT)["settings"] == {}  # the stages' defaults


def test_explicit_options_win_over_the_budget_and_are_recorded():
    cfg = RunConfig(iterations_sam=50, sam_options={"warmup": 5}, vnet_options={"filters": 4})
    cfg.budget_choice = budget.choose("fast", CPU2, SAMPLE_PROJECT)
    cfg.budget_choice["overridden"] = budget.overridden(cfg, cfg.budget_choice)
    eff = budget.effective(cfg)
    assert (eff.iterations_sam, eff.iterations_vnet, eff.backbone) == (50, 400, "lite_medsam")
    assert eff.sam_options == {"lora_rank": 0, "embedding_cache": 64, "warmup": 5}
    assert eff.vnet_options == {"filters": 4, "dropout": 0.0}
    assert cfg.budget_choice["overridden"] == ["--iterations-sam", "--sam-option warmup", "--vnet-option filters"]
    assert cfg.iterations_vnet is None  # the saved configuration keeps what the user gave
    from SFRSegmenterLib.run.config import finetune_config, retrain_config

    assert finetune_config(eff).embedding_cache == 64 and retrain_config(eff).iterations == 400
    paper = RunConfig(budget="paper")
    paper.budget_choice = budget.choose("paper", CPU2, SAMPLE_PROJECT)
    assert finetune_config(budget.effective(paper)).iterations == 6000


def test_unknown_budget_is_refused():
    from SFRSegmenterLib.errors import SFRError

    with pytest.raises(SFRError, match="unknown budget 'cheap'"):
        budget.choose("cheap", CPU2, SAMPLE_PROJECT)


# --------------------------------------------------------------------------- through the real parsers

def _project(tmp_path: Path, unlabeled: int = 2) -> Path:
    from SFRSegmenterLib.commands.demo import make_demo_project

    return make_demo_project(tmp_path / "proj", 2, unlabeled).root


def test_slicer_command_line_carries_the_budget_through_the_engine_parser():
    from SFRSegmenterLib.runcontrol import RunSettings, config_of, start_command

    for name in budget.BUDGETS:
        s = RunSettings(budget=name)
        assert start_command("P", s)[start_command("P", s).index("--budget") + 1] == name
        assert config_of(s)["budget"] == name


def test_bad_budget_and_missing_cuda_exit_2_with_one_line_and_nothing_written(tmp_path):
    import torch

    root = _project(tmp_path)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    bad = run_sfr("run", root, "--budget", "cheap")
    assert bad.returncode == 2 and "--budget" in bad.stderr and "cheap" in bad.stderr
    from SFRSegmenterLib.runcontrol import RunSettings, start_command

    panel = run_sfr(*start_command(root, RunSettings(budget="cheap"), detach=False))  # the Slicer module's line
    assert panel.returncode == 2 and "invalid choice: 'cheap'" in panel.stderr
    if not torch.cuda.is_available():
        nocuda = run_sfr("run", root, "--device", "cuda")
        assert nocuda.returncode == 2
        assert [line for line in nocuda.stderr.splitlines() if "CUDA" in line] and "Traceback" not in nocuda.stderr
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # no run folder, no lock


# --------------------------------------------------------------------------- the estimate, against a real run

def test_estimate_event_before_stage_f_matches_a_real_short_run(tmp_path):
    """A real ``sfr run`` (tiny_test backbone, a few iterations): the estimate comes before stage F,
    names every stage, is recorded with its budget, and its total is within a factor of 3 of the
    measured stage times (a run of seconds on a shared machine: overheads dominate)."""
    root = _project(tmp_path)
    proc = run_sfr("--progress", "json", "run", root, "--backbone", "tiny_test", "--iterations-sam", "20",
                   "--iterations-vnet", "20", "--vnet-option", "filters=4", "--device", "cpu",
                   env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    evs = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    kinds = [(e["event"], e.get("stage")) for e in evs]
    est_i = next(i for i, e in enumerate(evs) if e["event"] == "estimate")
    assert est_i < kinds.index(("stage", "finetune-r0"))
    est = evs[est_i]
    assert est["budget"] == "fast" and est["method"] == "calibration" and est["device"]["kind"] == "cpu"
    run = next(root.glob("runs/*/config.json")).parent
    stages = json.loads((run / "stages.json").read_text())
    assert set(est["stages"]) == set(stages)
    actual = sum(float(r["seconds"]) for r in stages.values())
    assert actual / 3 <= est["seconds"] <= actual * 3, (est["seconds"], actual)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["budget"] == "auto" and cfg["budget_choice"]["name"] == "fast"
    assert "--backbone" in cfg["budget_choice"]["overridden"]
    log = (run / "log.txt").read_text()
    assert "budget fast (auto)" in log and "estimate: about" in log
    fractions = [e["overall"] for e in evs if e["event"] == "progress" and "overall" in e]
    assert fractions and fractions == sorted(fractions) and fractions[-1] > 0.9
    assert all(e["overall_eta_s"] >= 0 for e in evs if "overall_eta_s" in e)
    status = json.loads((run / "status.json").read_text())
    assert status["estimate_s"] == est["seconds"] and status["budget"] == "fast"


def test_an_estimate_that_cannot_be_made_is_logged_and_the_run_goes_on(tmp_path, monkeypatch):
    from SFRSegmenterLib import events
    from SFRSegmenterLib.manifest import load_project
    from SFRSegmenterLib.run import estimate

    project = load_project(_project(tmp_path))
    cfg = RunConfig(backbone="no_such_backbone")
    seen = []
    events.add_sink(seen.append)
    try:
        assert estimate.emit_estimate(project, cfg) is None
    finally:
        events.remove_sink(seen.append)
    assert [e for e in seen if e["event"] == "log" and e["message"].startswith("no estimate of the run's duration")]
    assert not [e for e in seen if e["event"] == "estimate"]


def test_the_estimate_divides_the_split_stages_by_the_processes_only_where_they_are_faster():
    """On N GPUs the cases and stage R's iterations are split N ways; on the CPU the processes share
    the cores, so only cores the calibration left idle count; each split stage pays the launch."""
    from SFRSegmenterLib.run.estimate import STAGE_OVERHEAD_S, parallel_speedup, stage_seconds

    counts = {"iterations_sam": 10, "embedding_cache": 0, "iterations_vnet": 100, "sam_windows": 40,
              "vnet_windows": 20, "validation_windows": 5}
    sam = {"slabs": 1, "encoder_s": 0.5, "decoder_s": 0.5, "build_s": 1.0, "train_step_s": 1.0}
    vnet = {"train_step_s": 0.2, "window_s": 1.0}
    one = stage_seconds(counts, sam, vnet, 0)
    assert stage_seconds(counts, sam, vnet, 0, parallel_speedup(1, "cuda")) == one
    launch, o = STAGE_OVERHEAD_S["launch"], STAGE_OVERHEAD_S

    def per_case_work(stages):  # what the processes split: the stage minus its fixed parts
        return {"pseudolabel-r0": stages["pseudolabel-r0"] - o["pseudolabel"] - sam["build_s"],
                "retrain-r0": stages["retrain-r0"] - o["retrain"], "confidence-r0": stages["confidence-r0"] - o["confidence"]}

    work = per_case_work(one)
    assert work == pytest.approx({"pseudolabel-r0": 40.0, "retrain-r0": 20.0, "confidence-r0": 20.0})
    for speedup, factor in ((parallel_speedup(4, "cuda"), 4),
                            # the calibration used both cores: two processes of one thread each gain nothing
                            (parallel_speedup(2, "cpu", calibration_threads=2, process_threads=1, cores=2), 1),
                            # one thread calibrated, 4 idle cores, 2 processes of 2 threads: twice, not 4 times
                            (parallel_speedup(2, "cpu", calibration_threads=1, process_threads=2, cores=4), 2),
                            (parallel_speedup(4, "cpu", calibration_threads=2, process_threads=1, cores=4), 2)):
        assert speedup["cases"] == speedup["retrain"] == factor, speedup
        split = stage_seconds(counts, sam, vnet, 0, speedup)
        assert per_case_work({k: v - launch for k, v in split.items()}) == pytest.approx(
            {k: v / factor for k, v in work.items()}, abs=0.06)  # stage_seconds rounds to 0.1 s
        for name in ("stitch", "finetune-r0", "metrics"):  # the stages of the run's own process
            assert split[name] == one[name]
    why = parallel_speedup(2, "cpu", calibration_threads=2, process_threads=1, cores=2)["why"]
    assert "share 2 CPU cores" in why and "x1" in why


def test_a_saved_calibration_is_reused_only_for_the_same_models_on_the_same_machine(tmp_path, one_torch_thread):
    """``RUN/calibration.json``: an attempt of the run, or another run of the project (a warm
    start: other iterations, seed, learning rate), reuses each stage's step times measured for
    the same model on this machine; another V-Net shape times stage R again, stage F not."""
    from SFRSegmenterLib.manifest import load_project
    from SFRSegmenterLib.run import estimate

    project = load_project(_project(tmp_path))
    run = tmp_path / "run"
    run.mkdir()
    cfg = RunConfig(backbone="tiny_test", iterations_sam=2, iterations_vnet=2, device="cpu",
                    vnet_options={"filters": 4})
    first = estimate.estimate_run(project, cfg, run)
    assert first["calibration_reused"] == [] and (run / "calibration.json").exists()
    again = estimate.estimate_run(project, cfg, run)
    assert again["calibration_reused"] == ["sam", "vnet"] and again["steps"] == first["steps"]
    assert again["calibration_s"] < first["calibration_s"]
    # a later run of the project with another schedule: nothing timed again, its own record written
    later = tmp_path / "later"
    later.mkdir()
    schedule = dataclasses.replace(cfg, iterations_sam=7, iterations_vnet=5, seed=3,
                                   sam_options={"lr": 5e-4}, vnet_options={"filters": 4, "lr": 0.02})
    warm = estimate.estimate_run(project, schedule, later, earlier=[run / "calibration.json"])
    assert warm["calibration_reused"] == ["sam", "vnet"] and warm["steps"] == first["steps"]
    assert warm["seconds"] != first["seconds"] and (later / "calibration.json").exists()
    # another V-Net shape: stage R calibrates again, stage F's step times stay
    other = estimate.estimate_run(project, dataclasses.replace(cfg, vnet_options={"filters": 2}), run)
    assert other["calibration_reused"] == ["sam"] and other["steps"]["sam"] == first["steps"]["sam"]
    saved = json.loads((run / "calibration.json").read_text())
    assert saved["vnet"]["steps"]["train_step_s"] == pytest.approx(other["steps"]["vnet"]["train_step_s"], abs=1e-5)
    # a damaged or older record counts as none
    (later / "calibration.json").write_text('{"key": "old", "sam": {}, "vnet": {}}')
    assert estimate.estimate_run(project, cfg, tmp_path / "later")["calibration_reused"] == []


def test_overall_progress_skips_reused_stages_and_weights_by_the_estimate():
    from SFRSegmenterLib.run.progress import Overall

    o = Overall({"stitch": 1.0, "finetune-r0": 60.0, "retrain-r0": 39.0})
    o({"event": "stage", "pipeline": True, "stage": "stitch", "status": "start"})
    o({"event": "stage", "pipeline": True, "stage": "stitch", "status": "skipped"})
    o({"event": "stage", "pipeline": True, "stage": "finetune-r0", "status": "start"})
    assert o.fields("finetune", 50, 100)["overall"] == pytest.approx(30 / 99, abs=1e-4)
    assert o.fields("embed", 50, 100)["overall"] == 0.0  # a sub-step of the stage is not its progress
    o({"event": "stage", "pipeline": True, "stage": "finetune-r0", "status": "done"})
    o({"event": "stage", "pipeline": True, "stage": "retrain-r0", "status": "start"})
    assert o.fields("retrain", 39, 39)["overall"] == 1.0


def test_overall_progress_counts_the_embedding_cache_as_the_start_of_fine_tuning():
    from SFRSegmenterLib.run.progress import Overall

    o = Overall({"finetune-r0": 100.0, "retrain-r0": 100.0}, embed_share=0.4)
    o({"event": "stage", "pipeline": True, "stage": "finetune-r0", "status": "start"})
    assert o.fields("embed", 32, 64)["overall"] == pytest.approx(0.1)
    assert o.fields("finetune", 150, 300)["overall"] == pytest.approx(0.35)
    assert o.fields("embed", 1, 64)["overall_eta_s"] == pytest.approx(200 - 100 * 0.4 / 64, abs=0.2)  # too early: the estimate


def test_later_rounds_of_a_frozen_encoder_only_decode():
    """A frozen encoder's embeddings are stored by round 0 (..encoder_store): the estimate charges
    the later rounds' pseudo-labels the decoder only; with LoRA every round encodes again."""
    from SFRSegmenterLib.run.estimate import STAGE_OVERHEAD_S, stage_seconds

    counts = {"iterations_sam": 10, "embedding_cache": 4, "iterations_vnet": 100, "sam_windows": 40,
              "vnet_windows": 20, "validation_windows": 5}
    sam = {"slabs": 2, "encoder_s": 3.0, "decoder_s": 0.25, "build_s": 1.0, "train_step_s": 1.0}
    vnet = {"train_step_s": 0.2, "window_s": 1.0}
    lora = stage_seconds(counts, sam, vnet, 1)
    frozen = stage_seconds({**counts, "frozen_encoder": True}, sam, vnet, 1)
    assert lora["pseudolabel-r1"] == lora["pseudolabel-r0"] == frozen["pseudolabel-r0"]
    fixed = STAGE_OVERHEAD_S["pseudolabel"] + sam["build_s"]
    assert frozen["pseudolabel-r1"] == pytest.approx(fixed + 40 * 2 * 0.25, abs=0.06)
    assert {k: v for k, v in frozen.items() if k != "pseudolabel-r1"} == {k: v for k, v in lora.items() if k != "pseudolabel-r1"}


def test_the_log_and_the_report_say_where_the_step_times_came_from():
    """The estimate line of the log and of the report: timed now, reused, or partly (events of runs
    made before each stage had its own key carry ``calibration_reused: true``)."""
    from SFRSegmenterLib.run.estimate import how_calibrated

    assert how_calibrated({"calibration_reused": [], "calibration_s": 23.21}) == "calibrated in 23.2 s"
    both = how_calibrated({"calibration_reused": ["sam", "vnet"], "calibration_s": 0.2})
    assert both == "step times of stage F and stage R measured earlier on this machine reused"
    assert how_calibrated({"calibration_reused": True, "calibration_s": 0.1}) == both
    assert how_calibrated({"calibration_reused": ["sam"], "calibration_s": 4.0}) == (
        "step times of stage F measured earlier on this machine reused, the rest calibrated in 4.0 s")
    assert how_calibrated({"calibration_reused": False, "calibration_s": 6.1}) == "calibrated in 6.1 s"
