"""`sfr run` on a GPU: the whole SFR+ job end to end, and out-of-memory recovery on real CUDA OOMs.

    python bench/gpu/run_gpu.py            # on a GPU: about 3-5 min on an H100, no network
    python bench/gpu/run_gpu.py --smoke    # tiny sizes on CPU, to check the script

1. SFR+ (1 round) on the bundled 12 hippocampus cases (2 labeled) with LiteMedSAM (LoRA) and the
   V-Net on the GPU (``--device cuda``), as a detached job watched through ``status.json``;
   per-stage seconds, pseudo-label Dice against the hidden ground truth, peak memory.
2. Out of memory: ``job.with_oom_retry`` around a real CUDA allocation whose size follows
   the batch size (batch 4096 x 64 MiB = 256 GiB); it must halve the batch until the allocation
   fits, then succeed; and with a batch that never fits, give the one-line advice.
3. The same through the real fine-tuning stage: ``sfr run`` with ``--batch-size-sam`` far too large
   for the GPU must log the OOM retry and finish.
Writes bench/results/run_gpu.json and .md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

RESULTS = REPO / "bench" / "results"


def sfr(*args, env=None, check=True):
    e = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    e.update(env or {})
    p = subprocess.run([sys.executable, "-m", "SFRSegmenterLib", *map(str, args)], env=e, capture_output=True,
                       text=True)
    if check and p.returncode != 0:
        raise SystemExit(f"sfr {' '.join(map(str, args))} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return p


def end_to_end(work: Path, smoke: bool) -> dict:
    from SFRSegmenterLib.commands.demo import make_demo_project

    root = work / "hippo"
    make_demo_project(root, 2, 3 if smoke else None)
    args = ["run", root, "--sfr-plus", "--rounds", "1", "--device", "cpu" if smoke else "cuda", "--detach"]
    if smoke:
        args += ["--backbone", "tiny_test", "--iterations-sam", "3", "--iterations-vnet", "3",
                 "--vnet-option", "filters=4"]
    else:
        args += ["--backbone", "lite_medsam", "--iterations-sam", "300", "--iterations-vnet", "1500"]
    t0 = time.monotonic()
    run_id = sfr(*args).stdout.strip().splitlines()[-1]
    run = root / "runs" / run_id
    from SFRSegmenterLib import jobs

    while True:
        st = jobs.read_status(run)
        if st.get("state") not in ("starting", "running"):
            break
        time.sleep(2)
    wall = time.monotonic() - t0
    stages = json.loads((run / "stages.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").exists() else {}
    rounds = json.loads((run / "rounds.json").read_text()) if (run / "rounds.json").exists() else {}
    return {
        "state": st.get("state"), "error": st.get("error"), "wall_s": round(wall, 1),
        "stages_s": {k: v.get("seconds") for k, v in stages.items()},
        "pseudo_dice": (metrics.get("pseudo_labels") or {}).get("mean", {}).get("dice"),
        "rounds": [{k: r.get(k) for k in ("round", "trusted", "mean_confidence", "mean_dice", "stopped")}
                   for r in rounds.get("rounds", [])],
        "log_tail": (run / "log.txt").read_text().splitlines()[-5:],
    }


@dataclasses.dataclass
class _Cfg:
    batch_size: int


def oom_retry(smoke: bool) -> dict:
    import torch

    from SFRSegmenterLib.run import job
    from SFRSegmenterLib.errors import SFRError

    if smoke or not torch.cuda.is_available():
        return {"skipped": "no CUDA"}
    free, total = torch.cuda.mem_get_info()
    tried = []

    def alloc(cfg, after_oom):
        tried.append(cfg.batch_size)
        x = torch.empty(cfg.batch_size * (64 << 20), dtype=torch.uint8, device="cuda")  # 64 MiB per sample
        n = x.numel()
        del x
        return n

    out = {"free_gib": round(free / 2**30, 1), "total_gib": round(total / 2**30, 1)}
    n = job.with_oom_retry(alloc, _Cfg(4096), "allocation test")
    out["batches_tried"] = tried
    out["succeeded_with_bytes"] = n
    tried2 = []

    def never(cfg, after_oom):
        tried2.append(cfg.batch_size)
        torch.empty(1 << 50, dtype=torch.uint8, device="cuda")  # 1 PiB: never fits

    try:
        job.with_oom_retry(never, _Cfg(4), "allocation test")
        out["final_error"] = None
    except SFRError as exc:
        out["final_error"] = str(exc)
    out["never_tried"] = tried2
    return out


def oom_in_stage(work: Path, smoke: bool) -> dict:
    import torch

    if smoke or not torch.cuda.is_available():
        return {"skipped": "no CUDA"}
    from SFRSegmenterLib.commands.demo import make_demo_project

    root = work / "oom"
    make_demo_project(root, 2, 2)
    t0 = time.monotonic()
    p = sfr("run", root, "--device", "cuda", "--backbone", "lite_medsam", "--iterations-sam", "2", "--no-report",
            "--batch-size-sam", "1024", "--iterations-vnet", "5", check=False)
    run = root / "runs" / (root / "runs" / "latest").read_text().strip()
    log = (run / "log.txt").read_text()
    return {"returncode": p.returncode, "seconds": round(time.monotonic() - t0, 1),
            "retries_logged": [ln for ln in log.splitlines() if "out of memory" in ln],
            "stderr_tail": p.stderr[-500:]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on CPU")
    args = ap.parse_args()
    import torch

    from SFRSegmenterLib.device import describe_device, resolve_device

    dev = resolve_device("cpu" if args.smoke else "cuda")
    out = {"device": describe_device(dev), "smoke": args.smoke}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        out["end_to_end"] = end_to_end(work, args.smoke)
        out["oom_retry"] = oom_retry(args.smoke)
        out["oom_in_stage"] = oom_in_stage(work, args.smoke)
    if torch.cuda.is_available() and not args.smoke:
        out["peak_gib_this_process"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "run_gpu_smoke" if args.smoke else "run_gpu"
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=1))
    e = out["end_to_end"]
    lines = [f"# sfr run on {out['device']}", "",
             f"SFR+ (1 round), bundled hippocampus sample, 2 labeled: state {e['state']}, wall {e['wall_s']} s, "
             f"pseudo-label Dice {e['pseudo_dice']}", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in e["stages_s"].items()]
    o = out["oom_retry"]
    lines += ["", f"OOM retry (real CUDA allocations): {json.dumps(o)}", "",
              f"OOM inside fine-tuning: {json.dumps(out['oom_in_stage'])}"]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if e["state"] == "done" else 1


if __name__ == "__main__":
    sys.exit(main())
