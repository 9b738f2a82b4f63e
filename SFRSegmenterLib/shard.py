"""Cases split over processes under ``torchrun``: one process per GPU, any number of nodes.

``torchrun --nproc_per_node N -m SFRSegmenterLib pseudolabel|predict|review ...`` starts N
processes per node; each reads its place from torchrun's environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``), runs on ``cuda:LOCAL_RANK`` (or the CPU), processes its share of the cases and
writes their per-case files itself (atomically, each case by exactly one process).  Then the
processes meet once: :meth:`Shard.gather` gives every process the records of all, and only the
main process (rank 0) writes the shared index files.  Without torchrun (``WORLD_SIZE`` unset or 1)
nothing is initialised and the one process takes every case, as before.

The share is deterministic, the same in every process without talking to the others: cases
sorted by voxel count (largest first, then by name) go one by one to the process with the least
voxels so far (ties: the lower rank), and each process keeps the original order of its cases.
"""

from __future__ import annotations

import datetime as _dt
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

#: How long a process waits for the others at the final meeting (they may still be working on
#: bigger shares); a process that dies ends the whole job through torchrun, not through this.
GATHER_TIMEOUT = _dt.timedelta(hours=12)


def dist_info(device_type: str, timeout: "_dt.timedelta | None" = None) -> tuple:
    """(rank, world, local_rank, initialised_here) from torchrun's environment.

    The process group uses NCCL for CUDA and gloo otherwise (``SFR_DDP_BACKEND`` overrides)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0, False
    here = False
    if not dist.is_initialized():
        backend = os.environ.get("SFR_DDP_BACKEND") or ("nccl" if device_type == "cuda" else "gloo")
        if timeout is None:
            dist.init_process_group(backend)
        else:
            dist.init_process_group(backend, timeout=timeout)
        here = True
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), here


def is_main_process() -> bool:
    """True in the one process that prints summaries (rank 0, or no torchrun at all)."""
    return int(os.environ.get("RANK", "0")) == 0


def assign(sizes: Mapping[str, int], world: int) -> list:
    """``world`` lists of case names, balanced by ``sizes`` (voxels); see the module docstring."""
    shares = [[] for _ in range(world)]
    load = [0] * world
    for name in sorted(sizes, key=lambda n: (-int(sizes[n]), n)):
        r = min(range(world), key=lambda i: (load[i], i))
        shares[r].append(name)
        load[r] += int(sizes[name])
    return shares


@dataclass
class Shard:
    """This process's place in the job; ``world == 1`` is the plain single process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: object = None  # torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mine(self, names: Sequence[str], sizes: Mapping[str, int]) -> list:
        """This process's cases among ``names`` (in their order); ``sizes[name]``: voxels."""
        if self.world == 1:
            return list(names)
        own = set(assign({n: sizes[n] for n in names}, self.world)[self.rank])
        return [n for n in names if n in own]

    def report(self, stage: str, cases: Sequence[str]) -> None:
        """Under torchrun, every process says which cases it wrote: one ``shard`` event
        (``{"event": "shard", "stage", "rank", "world", "cases"}``); nothing in a single process."""
        if self.world > 1:
            from . import events

            events.emit("shard", stage=stage, rank=self.rank, world=self.world, cases=list(cases))

    def gather(self, obj) -> list:
        """Every process's ``obj``, in rank order, in every process (waits for all of them)."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


@contextmanager
def sharded(device: str = "auto") -> Iterator[Shard]:
    """The :class:`Shard` of this process for ``device`` (auto/cpu/cuda/mps).

    Under torchrun the process group is joined (and left at the end if this opened it) and a CUDA
    device becomes ``cuda:LOCAL_RANK``."""
    import torch
    import torch.distributed as dist

    from .device import resolve_device

    dev = resolve_device(device)
    rank, world, local_rank, here = dist_info(dev.type, GATHER_TIMEOUT)
    try:
        if dev.type == "cuda" and world > 1:
            dev = torch.device("cuda", local_rank)
            torch.cuda.set_device(dev)
        yield Shard(rank, world, local_rank, dev)
    finally:
        if here and dist.is_initialized():
            dist.destroy_process_group()


def voxel_counts(paths: Mapping[str, "str | os.PathLike"]) -> dict:
    """``{name: voxels}`` from the volumes' headers (no voxels read); one that cannot be read
    raises the same :class:`SFRError` in every process."""
    from .io import read_header

    counts = {}
    for name, path in paths.items():
        x, y, z = read_header(path)["size_xyz"]
        counts[name] = int(x) * int(y) * int(z)
    return counts


@contextmanager
def each_case(paths: Mapping[str, "str | os.PathLike"], device: str, what: str, load, work, out_dir, note=None):
    """The per-case loop of ``predict`` and ``review``: ``load(device)`` gives the model once (only
    then is ``out_dir`` created, so a model that does not load leaves nothing behind), then
    ``work(model, name)`` runs on this process's share of ``paths`` under a progress bar named
    ``what`` (``note(result)``: extra fields for its updates).

    Yields ``(shard, model, results)``: every process's results, in the order of ``paths``;
    whatever the caller does inside the ``with`` (the main process writing an index) happens
    before the process group is left."""
    from . import events

    with sharded(device) as shard:
        sizes = voxel_counts(paths) if shard.world > 1 else {}
        own = shard.mine(list(paths), sizes)
        model = load(shard.device)
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        results = {}
        bar = events.Progress(what, len(own)) if shard.main else None
        for i, name in enumerate(own):
            results[name] = work(model, name)
            if bar is not None:
                bar.update(i + 1, case=name, **(note(results[name]) if note else {}))
        shard.report(what, own)
        for part in shard.gather(results):
            results.update(part)
        yield shard, model, {name: results[name] for name in paths}
