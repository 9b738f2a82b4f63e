"""Stage R, the pseudo-labels and the confidence stage of ``sfr run`` on several processes
(``--processes N|auto``).

With more than one process the pipeline (:mod:`.pipeline`) does not call the library function
in its own process: :func:`call` writes the call (the function's name, the stage
configuration, every keyword argument, the run's cancel file) to a spec file in a temporary
folder and starts ::

    python -m torch.distributed.run --standalone --nproc_per_node N -m SFRSegmenterLib.run.distributed SPEC

whose N processes (this module's :func:`main`) make exactly that call: stage R splits the global
batch over them (:mod:`..retrain.train`, DDP), the pseudo-labels and the confidence stage's
new cases split the cases (:mod:`..shard`).  The main process (rank 0) prints its events as JSON
lines; the pipeline re-emits them as its own (:func:`..events.forward`), so ``status.json``,
``events.jsonl``, the log and the overall progress see what they see in one process.  Every
process polls the run's cancel file (what ``sfr cancel`` writes); in stage R they agree on the
iteration they stop at, in the confidence stage each takes no further case.
Each process writes its outcome (done, cancelled, :class:`SFRError`, another error) to
``rank<R>.json`` in the spec folder, the main process with the function's return value when the
pipeline needs it (:data:`RESULTS`, JSON); :func:`call` returns that value, or raises the same kind
of error in the pipeline (an out-of-memory message stays one, so :func:`.oom.with_oom_retry` still
halves the batch).

Results equal one process's when the configuration allows it (:func:`exact`: no dropout, no
batch normalisation; the stage key then ignores the number of processes); otherwise the number
of processes is part of stage R's key (:func:`key_parts`).  Several nodes: docs/run.md.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from .. import events
from ..errors import Cancelled, SFRError

#: The library functions a run may call on several processes: ``{name: (module, function)}``.
FUNCTIONS = {"retrain": ("SFRSegmenterLib.retrain", "retrain"),
             "pseudolabel": ("SFRSegmenterLib.pseudolabel", "pseudolabel"),
             "confidence": ("SFRSegmenterLib.run.stages", "review_cases")}
#: The functions whose return value (the main process's, JSON) :func:`call` returns from N processes.
RESULTS = ("confidence",)
AUTO = "auto"
SPEC_JSON = "spec.json"


# --------------------------------------------------------------------------- choosing N


def parse_processes(value) -> "int | str":
    """``--processes``: ``auto`` or a whole number >= 1 (None: auto)."""
    if value is None or str(value).strip().lower() == AUTO:
        return AUTO
    try:
        n = int(str(value).strip())
    except ValueError:
        n = None
    if n is None or n < 1:
        raise SFRError(f"--processes must be a whole number >= 1 or auto, got {value!r}")
    return n


def resolve_processes(asked, device, cuda_devices: "int | None" = None) -> tuple:
    """``(N, why)`` for ``asked`` (``auto`` or N) on ``device`` (a resolved torch.device) with
    ``cuda_devices`` CUDA devices (None: as many as torch sees).

    ``auto``: one process per CUDA device when there are several, else 1.  An explicit N above
    the CUDA devices, N > 1 on a single named CUDA device (``cuda:1``) or on MPS is refused."""
    asked = parse_processes(asked)
    kind = getattr(device, "type", str(device))
    gpus = 0
    if kind == "cuda":
        if cuda_devices is None:
            import torch

            cuda_devices = torch.cuda.device_count()
        gpus = int(cuda_devices)
    if asked == AUTO:
        if kind == "cuda" and gpus > 1 and getattr(device, "index", None) is None:
            return gpus, f"auto: one process per CUDA device ({gpus})"
        return 1, "auto: one process" + (f" ({gpus} CUDA device)" if kind == "cuda" else f" on {kind}")
    if asked > 1:
        if kind == "mps":
            raise SFRError(f"--processes {asked}: several processes need CUDA GPUs or the CPU, not MPS")
        if kind == "cuda" and getattr(device, "index", None) is not None:
            raise SFRError(f"--processes {asked} uses cuda:0..{asked - 1}; give --device cuda, not {device}")
        if kind == "cuda" and asked > gpus:
            raise SFRError(f"--processes {asked}: this machine has {gpus} CUDA device(s)")
    return asked, "asked" + (" (gloo on the CPU)" if kind == "cpu" and asked > 1 else "")


def check_batches(processes: int, retrain_cfg) -> None:
    """Stage R's global batch must split evenly over the processes (refused before any work)."""
    if processes <= 1:
        return
    for what, n in (("labeled", retrain_cfg.labeled_bs), ("unlabeled", retrain_cfg.unlabeled_bs)):
        if n % processes:
            raise SFRError(f"--processes {processes}: stage R's {what} batch {n} cannot be split over "
                           f"{processes} processes (use --vnet-option labeled_bs=/unlabeled_bs= multiples of it)")


def exact(retrain_cfg) -> bool:
    """Stage R on N processes equals one process (up to float summation order): the loss is per
    sample and the randomness per (seed, iteration, slot), but dropout masks are drawn per process
    and batch statistics are taken per process (and in the mean teacher's copy)."""
    return float(retrain_cfg.dropout) == 0.0 and retrain_cfg.norm != "batchnorm"


def key_parts(processes: int, retrain_cfg) -> list:
    """What stage R's key adds for ``processes``: nothing when the result does not depend on it."""
    return [] if processes <= 1 or exact(retrain_cfg) else [{"processes": int(processes)}]


# --------------------------------------------------------------------------- the pipeline's side


def call(name: str, processes: int, run_path: Path, should_stop, project, config=None, **kwargs):
    """``FUNCTIONS[name](project, [config], should_stop=..., **kwargs)``: in this process when
    ``processes`` is 1, else on ``processes`` torchrun processes (then the main process's return
    value for a function of :data:`RESULTS`, None for the others)."""
    module, function = FUNCTIONS[name]
    if processes <= 1:
        import importlib

        fn = getattr(importlib.import_module(module), function)
        return fn(project, *([config] if config is not None else []), should_stop=should_stop, **kwargs)
    spec = {"function": name, "project": str(Path(project.root).resolve()), "run": str(Path(run_path).resolve()),
            "config": dataclasses.asdict(config) if config is not None else None,
            "kwargs": _encode(kwargs)}
    with tempfile.TemporaryDirectory(prefix="sfr-processes-") as tmp:
        folder = Path(tmp)
        (folder / SPEC_JSON).write_text(json.dumps(spec), encoding="utf-8")
        events.log(f"{name} on {processes} processes (torchrun)")
        rc, tail = _launch(folder, processes)
        outcomes = _raise_outcome(folder, processes, rc, tail, name)
    return _decode(outcomes[0].get("result")) if name in RESULTS else None


def command(spec_folder: Path, processes: int) -> list:
    """The torchrun command line of one stage (``sys.executable``: in Slicer the engine already
    runs in its own process, started through Slicer's Python launcher)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={int(processes)}",
            "-m", __name__, str(Path(spec_folder) / SPEC_JSON)]


def threads_per_process(processes: int) -> int:
    """The CPU threads each of ``processes`` processes gets: ``OMP_NUM_THREADS`` when it is set,
    else the cores shared out (torchrun would set 1 and warn)."""
    given = os.environ.get("OMP_NUM_THREADS", "").strip()
    if given.isdigit() and int(given) >= 1:
        return int(given)
    return max(1, (os.cpu_count() or 1) // max(1, int(processes)))


def _launch(folder: Path, processes: int) -> tuple:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(threads_per_process(processes)))
    stderr_path = folder / "stderr.txt"
    with open(stderr_path, "w", encoding="utf-8") as err:
        proc = subprocess.Popen(command(folder, processes), stdout=subprocess.PIPE, stderr=err, env=env,
                                text=True, encoding="utf-8", errors="replace", bufsize=1)
        try:
            for line in proc.stdout:
                _forward_line(line)
            rc = proc.wait()
        finally:
            if proc.poll() is None:  # the pipeline itself was interrupted
                proc.kill()
                proc.wait()
    lines = [ln for ln in stderr_path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    return rc, lines[-20:]


def _forward_line(line: str) -> None:
    line = line.strip()
    if not line:
        return
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        record = None
    if isinstance(record, dict) and "event" in record:
        events.forward(record)
    else:
        events.log(line)


def _raise_outcome(folder: Path, processes: int, rc: int, tail: list, name: str) -> list:
    """Every process's outcome, in rank order, when all of them are done; else the error they tell."""
    outcomes = []
    for rank in range(processes):
        p = folder / f"rank{rank}.json"
        if p.exists():
            outcomes.append(json.loads(p.read_text(encoding="utf-8")))
    for kind in ("sfr", "error", "cancelled"):  # the most telling first
        for o in outcomes:
            if o.get("outcome") == kind:
                if kind == "sfr":
                    raise SFRError(o["message"], o.get("path"))
                if kind == "cancelled":
                    raise Cancelled(o["message"])
                if "out of memory" in o["message"].lower():
                    raise RuntimeError(o["message"])  # with_oom_retry reads it as out of memory
                raise RuntimeError(f"{name} on {processes} processes: {o['type']}: {o['message']}")
    if rc != 0 or len(outcomes) < processes:
        last = tail[-1] if tail else "no message"
        raise RuntimeError(f"{name} on {processes} processes (torchrun) ended with exit status {rc}: {last}")
    return outcomes


def _encode(value):
    if isinstance(value, Path):
        return {"__path__": str(value)}
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    return value


def _decode(value):
    if isinstance(value, dict):
        if set(value) == {"__path__"}:
            return Path(value["__path__"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


# --------------------------------------------------------------------------- one torchrun process


def _config(name: str, fields):
    if fields is None:
        return None
    if name == "retrain":
        from ..retrain.config import RetrainConfig

        if fields.get("crop") is not None:
            fields = {**fields, "crop": tuple(fields["crop"])}
        return RetrainConfig(**fields)
    raise SFRError(f"{name} takes no stage configuration")


def main(argv=None) -> int:
    """One of the N processes: make the call in ``SPEC``, write ``rank<R>.json`` with how it ended."""
    from .. import jobs
    from ..manifest import load_project

    spec_path = Path((argv if argv is not None else sys.argv[1:])[0])
    rank = int(os.environ.get("RANK", "0"))
    events.configure("json" if rank == 0 else "none")
    outcome = {"outcome": "done"}
    code = 0
    try:
        spec = json.loads(spec_path.read_text(encoding="utf-8"))
        module, function = FUNCTIONS[spec["function"]]
        import importlib

        fn = getattr(importlib.import_module(module), function)
        config = _config(spec["function"], spec.get("config"))
        result = fn(load_project(spec["project"]), *([config] if config is not None else []),
                    should_stop=jobs.stop_checker(Path(spec["run"])), **_decode(spec["kwargs"]))
        if rank == 0 and spec["function"] in RESULTS:
            outcome["result"] = _encode(result)
    except Cancelled as exc:
        outcome, code = {"outcome": "cancelled", "message": str(exc)}, jobs.EXIT_CANCELLED
    except SFRError as exc:
        outcome, code = {"outcome": "sfr", "message": exc.message, "path": exc.path}, SFRError.exit_code
    except Exception as exc:  # noqa: BLE001 - reported to the pipeline, which raises it there
        import traceback

        traceback.print_exc()
        outcome, code = {"outcome": "error", "type": type(exc).__name__, "message": str(exc)}, 1
    (spec_path.parent / f"rank{rank}.json").write_text(json.dumps(outcome), encoding="utf-8")
    return code


if __name__ == "__main__":
    sys.exit(main())
