"""GPU and memory, checked before a long run: what the panel says before it starts one.

:func:`probe` reads what the chosen device offers (torch for the GPU, psutil for the RAM); the
panel calls it through :func:`probe_in_subprocess`, in a short child process, so that Slicer's
own process never imports torch nor creates a CUDA context (``mem_get_info`` makes one, which
holds GPU memory for as long as Slicer runs);
:func:`warnings` compares it with what a run of the chosen backbone is known to need.  Only
measured needs are used, each from a benchmark under ``bench/results``; for a backbone without
a measurement the panel says so instead of guessing.  The engine still retries with smaller
batches when the GPU runs out of memory; these warnings are for the person before an hour-long
run, not a gate.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass

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


# --------------------------------------------------------------------------- in a child process

#: Seconds the child may take (importing torch the first time can be slow).
PROBE_TIMEOUT_S = 180.0


def device_facts(device: str = "auto", python: "str | None" = None, timeout_s: float = PROBE_TIMEOUT_S) -> tuple:
    """``(Resources of device, [DeviceChoice, ...])``, read by a short child process
    (``python -m SFRSegmenterLogicLib.resources DEVICE``), never in this process.  One line
    (SFRError) when the child fails: its last error line."""
    from SFRSegmenterLib.errors import SFRError

    from .environment import DeviceChoice
    from .runner import logic_environment, python_executable

    args = [python or python_executable(), "-m", "SFRSegmenterLogicLib.resources", device]
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, env=logic_environment(),
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SFRError(f"could not read the GPU and memory: {exc}") from None
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        errors = [line for line in proc.stderr.splitlines() if line.strip()]
        raise SFRError("could not read the GPU and memory: " + (errors[-1] if errors else f"exit {proc.returncode}"))
    data = json.loads(lines[-1])
    return Resources(**data["resources"]), [DeviceChoice(*choice) for choice in data["devices"]]


def probe_in_subprocess(device: str = "auto", python: "str | None" = None) -> Resources:
    """:func:`probe` in a short child process (see :func:`device_facts`)."""
    return device_facts(device, python)[0]


def _main(argv) -> int:
    from .environment import available_devices

    found = probe(argv[0] if argv else "auto")
    devices = [[choice.value, choice.label] for choice in available_devices(import_torch=True)]
    print(json.dumps({"resources": asdict(found), "devices": devices}))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
