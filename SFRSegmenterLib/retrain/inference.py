"""Sliding-window inference of a re-trained network, with softmax averaging.

The windows (the training crop by default) and their stride follow :mod:`..sliding`: by default
they overlap by :data:`~..sliding.DEFAULT_OVERLAP` of the window; ``stride="paper"`` is the paper's
LA stride (4, 18, 18) scaled to the window.  Windows run in batches of ``batch``, their softmax
probabilities averaged where they overlap.  A volume smaller than the window is padded with zeros
(symmetrically) and the padding cut away afterwards.  Only one batch of windows is on the device at
a time; the accumulator lives in host memory.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..device import resolve_device
from ..errors import SFRError
from ..io import Volume, case_name, inside, read_image, volume_entry, write_volume
from ..sliding import PAPER_STRIDE, PAPER_WINDOW, resolve_stride, sliding_window, window_starts  # noqa: F401
from .data import normalize
from .networks import build_network
from .names import FORMAT, MODEL_FILE


def default_stride(window: Sequence[int]) -> tuple:
    """The default stride for ``window``: windows overlapping by ``sliding.DEFAULT_OVERLAP``."""
    return resolve_stride(window)


def load_model(model_dir: "str | os.PathLike", device="auto", network: str | None = None, num_classes: int | None = None):
    """Load ``model_dir/model.pt`` (or that file itself) onto ``device``, in eval mode.

    The returned module has ``sfr_meta`` (network, classes, window, ...).  A file that is not an
    SFR model, or whose weights do not fit the recorded (or the expected ``network`` /
    ``num_classes``) architecture, raises :class:`SFRError` naming it.
    """
    path = Path(model_dir)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.exists():
        raise SFRError("model file not found (train one with 'sfr retrain')", path)
    try:
        rec = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]  # an empty file: no text
        raise SFRError(f"cannot read model file ({reason})", path) from None
    if not isinstance(rec, dict) or rec.get("format") != FORMAT or "state_dict" not in rec:
        raise SFRError("not an SFR re-trained model file (no 'format: sfr-retrain-model')", path)
    if network is not None and rec["network"] != network:
        raise SFRError(f"model file holds a {rec['network']!r} network, expected {network!r}", path)
    if num_classes is not None and rec["num_classes"] != num_classes:
        raise SFRError(f"model file has {rec['num_classes']} classes, expected {num_classes}", path)
    try:
        model = build_network(rec["network"], rec.get("in_channels", 1), rec["num_classes"], **rec.get("options", {}))
    except (ValueError, TypeError) as exc:
        raise SFRError(f"model file names an unknown network: {exc}", path) from None
    try:
        model.load_state_dict(rec["state_dict"], strict=True)
    except RuntimeError as exc:
        first = [ln.strip() for ln in str(exc).splitlines() if ln.strip()][1:2]
        raise SFRError(
            f"weights do not fit a {rec['network']} with {rec['num_classes']} classes "
            f"(another backbone or class count?){': ' + first[0][:160] if first else ''}",
            path,
        ) from None
    model.sfr_meta = {k: v for k, v in rec.items() if k != "state_dict"}
    model.sfr_meta["path"] = str(path)
    return model.to(resolve_device(device) if isinstance(device, str) else device).eval()


@torch.no_grad()
def predict_volume(model, volume, window=None, stride=None, batch: int = 4, overlap: "float | None" = None,
                   blend: str = "constant") -> np.ndarray:
    """Softmax probabilities ``[K, D, H, W]`` (float32) of ``volume`` (a Volume or array).

    ``window`` defaults to the model's training crop; ``stride`` (three ints or ``"paper"``) or
    ``overlap`` (a fraction of the window) set the step, by default ``sliding.DEFAULT_OVERLAP``.
    The volume is z-scored as in training.
    """
    meta = getattr(model, "sfr_meta", {}) or {}
    window = tuple(int(w) for w in (window or meta.get("window") or PAPER_WINDOW))
    stride = resolve_stride(window, stride, overlap)
    arr = volume.array if isinstance(volume, Volume) else np.asarray(volume)
    if meta.get("normalization", "zscore") == "zscore":
        arr = normalize(arr)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()

    def softmax(tiles, corners):
        return torch.softmax(model(torch.from_numpy(tiles)[:, None].to(device)).float(), dim=1)

    try:
        return sliding_window(arr, window, stride, softmax, batch=batch, blend=blend, pad="center")
    finally:
        if was_training:
            model.train()


def _image_paths(images) -> list:
    if isinstance(images, (str, os.PathLike)):
        p = Path(images)
        if p.is_dir():
            paths = sorted(q for q in p.iterdir() if volume_entry(q))
            if not paths:
                raise SFRError("no image volumes in folder", p)
            return paths
        return [p]
    return [Path(q) for q in images]


def case_paths(images) -> dict:
    """``{case: image path}`` of a folder of images or a list of files, in their order; two images
    of the same case (``a.nii.gz`` and ``a.nrrd``) would write the same outputs and are refused."""
    paths = {}
    for path in _image_paths(images):
        name = case_name(path)
        if name in paths:
            raise SFRError(f"two images of case {name!r} ({paths[name].name} and {path.name}): "
                           "their outputs would have the same name", path)
        paths[name] = path
    return paths


def refuse_overwriting_inputs(out_dir: Path, names, suffixes, inputs) -> None:
    """Refuse an output file that is one of the input images, or that the output guard refuses
    (a project's image or label; in a claimed ``--out``, a file sfr did not write), before
    anything is written."""
    from ..io import check_output

    resolved = {Path(p).resolve() for p in inputs}
    for name in names:
        for suffix in suffixes:
            target = inside(out_dir, f"{name}{suffix}")  # a case name never leads out of --out
            if target.resolve() in resolved:
                raise SFRError("output would overwrite an input image; choose another --out", target)
            check_output(target)


#: Written beside a published model by ``sfr run``: the post-processing its results had.
POSTPROCESS_JSON = "postprocess.json"


def model_postprocess(model_dir) -> dict:
    """``{"largest_component": bool}`` of a published model folder (none recorded: off)."""
    from ..io import read_json

    folder = Path(model_dir)
    folder = folder.parent if folder.suffix == ".pt" else folder
    recorded = read_json(folder / POSTPROCESS_JSON, "post-processing record", missing={})
    return {"largest_component": bool(recorded.get("largest_component", False))}


def predict_folder(model_dir, images_dir_or_paths, out_dir, stride=None, device="auto", window=None, batch: int = 4,
                   overlap: "float | None" = None, blend: str = "constant",
                   largest_component: "bool | None" = None) -> dict:
    """Predict every image; write ``<case>.nii.gz`` (uint8 argmax) and ``<case>_confidence.nii.gz``
    (float32 max softmax) into ``out_dir`` in each image's geometry.  ``largest_component`` None:
    the model's own post-processing (:func:`model_postprocess`), so a published model segments the
    next patient as it segmented the run's cases.

    Under ``torchrun`` the images are split over the processes (:mod:`..shard`), each writing its
    own cases' files; every process returns the results of all.
    Returns ``{case: {"label": path, "confidence": path, "mean_confidence": float, "seconds": float}}``.
    """
    from ..shard import each_case

    paths = case_paths(images_dir_or_paths)
    out_dir = Path(out_dir)
    resolve_stride(window or PAPER_WINDOW, stride, overlap)  # bad values fail before any work
    refuse_overwriting_inputs(out_dir, paths, (".nii.gz", "_confidence.nii.gz"), paths.values())
    if largest_component is None:
        largest_component = model_postprocess(model_dir)["largest_component"]

    def work(model, name):
        return _predict_case(model, paths[name], inside(out_dir, f"{name}.nii.gz"),
                             inside(out_dir, f"{name}_confidence.nii.gz"), window, stride, batch, overlap, blend,
                             largest_component)

    with each_case(paths, device, "predict", partial(load_model, model_dir), work, out_dir) as (_, _, results):
        return results


def _predict_case(model, image_path: Path, label_path: Path, conf_path: Path, window, stride, batch,
                  overlap=None, blend="constant", largest_component: bool = False) -> dict:
    """Predict one image and write its label and confidence map."""
    import time

    image = read_image(image_path)
    t0 = time.monotonic()
    prob = predict_volume(model, image, window=window, stride=stride, batch=batch, overlap=overlap, blend=blend)
    seconds = time.monotonic() - t0
    label = prob.argmax(0).astype(np.uint8)
    if largest_component:
        from ..quality import keep_largest_component

        label = keep_largest_component(label, prob.shape[0])
    conf = prob.max(0).astype(np.float32)
    write_volume(image.with_array(label), label_path)
    write_volume(image.with_array(conf), conf_path)
    return {
        "label": str(label_path),
        "confidence": str(conf_path),
        "mean_confidence": float(conf.mean()),
        "seconds": round(seconds, 3),
    }
