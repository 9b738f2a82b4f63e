"""GPU and memory, checked before a long run: what the panel says before it starts one.

:func:`probe` reads what the chosen device offers (torch for the GPU, psutil for the RAM);
:func:`warnings` compares it with what a run of the chosen backbone is known to need.  Only
measured needs are used, each from a benchmark under ``bench/results``; for a backbone without
a measurement the panel says so instead of guessing.  The engine still retries with smaller
batches when the GPU runs out of memory; these warnings are for the person before an hour-long
run, not a gate.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

#: Peak GPU memory of SAM fine-tuning at the engine's defaults on CUDA (bf16, batch 2, no
#: activation checkpointing), in GiB: bench/results/sam_gpu.md.
MEASURED_GPU_GIB = {"vit_b": 16.8}
#: Backbones built on the same architecture as a measured one (same need).
SAME_ARCHITECTURE = {"medsam_vit_b": "vit_b"}
#: Larger than a measured one: they need more (by how much was not measured).
LARGER_THAN = {"vit_l": "vit_b", "vit_h": "vit_b"}
#: Peak resident memory of stage F on the CPU, in GiB: bench/results/sam_speed.md (lite_medsam).
MEASURED_RAM_GIB = {"lite_medsam": 3.9}


@dataclass
class Resources:
    """What the chosen device offers (GiB; None where unknown)."""

    device: str  # "cuda:0", "mps" or "cpu"
    name: str
    gpu_total_gib: float | None = None
    gpu_free_gib: float | None = None
    ram_available_gib: float | None = None
    cpu_cores: int = 1


def probe(device: str = "auto") -> Resources:
    """The device ``sfr run --device DEVICE`` would use, and its free memory (imports torch)."""
    import psutil
    import torch

    ram = psutil.virtual_memory().available / 2**30
    cores = os.cpu_count() or 1
    want_cuda = device == "auto" or device.startswith("cuda")
    if want_cuda and torch.cuda.is_available():
        index = int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0
        free, total = torch.cuda.mem_get_info(index)
        name = torch.cuda.get_device_properties(index).name
        return Resources(f"cuda:{index}", name, total / 2**30, free / 2**30, ram, cores)
    mps = getattr(torch.backends, "mps", None)
    if device in ("auto", "mps") and mps is not None and mps.is_available():
        return Resources("mps", "Apple GPU (MPS)", None, None, ram, cores)
    return Resources("cpu", f"CPU ({cores} cores)", None, None, ram, cores)


def _gpu_need(backbone: str) -> tuple:
    """(GiB, exact) the backbone is known to need on a GPU; (None, False) when never measured."""
    measured = SAME_ARCHITECTURE.get(backbone, backbone)
    if measured in MEASURED_GPU_GIB:
        return MEASURED_GPU_GIB[measured], True
    if backbone in LARGER_THAN:
        return MEASURED_GPU_GIB[LARGER_THAN[backbone]], False
    return None, False


def warnings(resources: Resources, backbone: str, requested: str = "auto") -> list:
    """Plain sentences for the panel: only a CPU, too little GPU or system memory."""
    out = []
    if resources.device == "cpu":
        if requested != "cpu":
            out.append("No GPU was found: the run uses the CPU and takes hours instead of minutes.")
        if backbone not in ("lite_medsam", "tiny_test"):
            out.append(f"The {backbone} backbone on a CPU is very slow; LiteMedSAM is the backbone made for CPUs.")
    need, exact = _gpu_need(backbone)
    if resources.device.startswith("cuda") and need is not None and resources.gpu_free_gib is not None:
        if resources.gpu_free_gib < need:
            what = f"about {need:.1f} GiB" if exact else f"more than {need:.1f} GiB (ViT-B's; not measured)"
            out.append(f"{resources.name} has {resources.gpu_free_gib:.1f} GiB free; fine-tuning {backbone} "
                       f"needs {what}. The engine retries with smaller batches, which is slower; close other "
                       "programs that use the GPU or choose LiteMedSAM.")
    ram_need = MEASURED_RAM_GIB.get(backbone)
    if resources.device == "cpu" and ram_need is not None and resources.ram_available_gib is not None:
        if resources.ram_available_gib < ram_need:
            out.append(f"Only {resources.ram_available_gib:.1f} GiB of memory is available; a run of {backbone} "
                       f"on the CPU needs about {ram_need:.1f} GiB.")
    return out


def describe(resources: Resources) -> str:
    """One line: the device and its free memory."""
    parts = [resources.name]
    if resources.gpu_free_gib is not None and resources.gpu_total_gib is not None:
        parts.append(f"{resources.gpu_free_gib:.1f} of {resources.gpu_total_gib:.1f} GiB GPU memory free")
    if resources.ram_available_gib is not None:
        parts.append(f"{resources.ram_available_gib:.1f} GiB RAM available")
    return ", ".join(parts)
