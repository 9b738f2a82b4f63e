"""Choosing the compute device: ``auto`` picks CUDA, then Apple MPS, then CPU, and says which."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import SFRError

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str = "auto") -> "torch.device":
    """A :class:`torch.device` for ``name``; an unavailable explicit choice is an error."""
    import torch  # here, not at import: the command line lists DEVICES without loading torch

    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SFRError("--device cuda was asked for but no CUDA GPU is available (try --device cpu)")
        return torch.device(name)
    if name == "mps":
        if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
            raise SFRError("--device mps was asked for but Apple MPS is not available (try --device cpu)")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise SFRError(f"unknown device {name!r} (choose from {', '.join(DEVICES)})")


def describe_device(device: "torch.device") -> str:
    """Human description: 'cuda:0 (NVIDIA H100, 79.1 GiB)', 'cpu (2 threads)'."""
    import torch

    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(idx)
        return f"cuda:{idx} ({props.name}, {props.total_memory / 2**30:.1f} GiB)"
    if device.type == "mps":
        return "mps (Apple GPU)"
    return f"cpu ({torch.get_num_threads()} threads)"
