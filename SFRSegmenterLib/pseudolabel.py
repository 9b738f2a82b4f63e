"""Stage F output: whole-volume pseudo-labels and confidence from the fine-tuned SAM.

Each volume goes window by window (the training crop, overlapping by ``overlap`` of the window, the
positions of :mod:`.sliding`, as the V-Net's) through stitch -> model -> bilinear upsampling of the
low-resolution logits to the canvas -> softmax -> unstitch; overlapping windows are averaged.  For every case this writes, in the image's
own geometry, ``<case>.nii.gz`` (uint8 argmax label) and ``<case>_confidence.nii.gz``
(float32 max softmax probability in [0, 1]), and records in ``pseudo-labels.json``::

    {"schema_version": 1, "model_id": "sam-...", "model_dir": "...", "model_metadata_mtime": ...,
     "project": "la16", "updated": "...",
     "cases": {"case02": {"image": "/abs/images/case02.nii.gz", "image_sha256": "...",
                          "label": "case02.nii.gz", "confidence": "case02_confidence.nii.gz",
                          "mean_confidence": 0.97, "model_id": "sam-...", "created": "..."}}}

so that re-training can tell stale (other model, changed image) or foreign pseudo-labels.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from . import encoder_store, events
from .device import describe_device, resolve_device
from .errors import Cancelled, SFRError
from .finetune import MODEL_META, PARTS_FILE, load_parts, read_model_meta
from .clock import utcnow
from .io import check_outputs, inside, Volume, read_image, read_json, sha256_file, write_volume
from .manifest import Project, write_json_atomic
from .sam import checkpoints
from .sam.layout import Layout
from .sam.preprocess import normalize
from .sam import build_segmenter, get_spec
from .shard import sharded, voxel_counts
from .sliding import SAM_OVERLAP, check_overlap, overlap_stride, sliding_window
from .stitching import stitch, unstitch

PSEUDO_JSON = "pseudo-labels.json"


def _base_checkpoint(meta: dict, model_dir: Path):
    """Where the base weights of a saved model are now (None: the backbone's default)."""
    spec = get_spec(meta["backbone"])
    if spec.test_only:
        return None
    recorded = meta.get("checkpoint")
    if recorded and Path(recorded).exists():
        return recorded
    if spec.bundled:
        return None  # the wheel's asset; its sha256 is checked against the recorded one
    name = Path(recorded).name if recorded else spec.checkpoint_name
    cached = checkpoints.cache_dir() / name
    if cached.exists():
        return cached
    raise SFRError(
        f"the model was fine-tuned from base checkpoint {recorded} (sha256 "
        f"{meta.get('checkpoint_sha256')}), which is not there: put that file at {recorded} "
        f"or {cached}",
        model_dir / MODEL_META,
    )


def load_sam_model(model_dir: "str | os.PathLike", device: "str | torch.device" = "cpu"):
    """Rebuild a fine-tuned model from ``model_dir`` (base weights + saved parts), in eval mode."""
    model_dir = Path(model_dir)
    meta = read_model_meta(model_dir)
    parts = model_dir / meta.get("parts_file", PARTS_FILE)
    if not parts.exists():
        raise SFRError("saved model parts not found (interrupted or incomplete model folder)", parts)
    model = build_segmenter(
        meta["backbone"],
        _base_checkpoint(meta, model_dir),
        int(meta["num_masks"]),
        int(meta["lora_rank"]),
        expected_sha256=meta.get("checkpoint_sha256"),
    )
    load_parts(model, parts)
    model.meta = dict(meta)
    model.layout = Layout.from_dict(meta["layout"])
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    return model.to(dev).eval()


@torch.no_grad()
def predict_probabilities(
    model,
    volume: "Volume | np.ndarray",
    overlap: float = SAM_OVERLAP,
    batch_size: int = 4,
    should_stop: "Callable[[], bool] | None" = None,
    encoder_cache: "dict | None" = None,
    cache_key=None,
) -> np.ndarray:
    """Softmax probabilities ``[K, D, H, W]`` (float32) of the whole volume.

    ``encoder_cache`` (a dict, for models fine-tuned with a frozen encoder, LoRA rank 0)
    keeps image embeddings by ``(cache_key, window)`` so that several decoders fine-tuned
    from the same frozen encoder can share one encoder pass per window.
    """
    if encoder_cache is not None and int(model.meta.get("lora_rank", 0)) != 0:
        raise ValueError("encoder_cache needs a frozen-encoder model (LoRA rank 0)")
    array = volume.array if isinstance(volume, Volume) else np.asarray(volume)
    layout: Layout = model.layout
    image = normalize(array, model.meta["preprocess"])
    predictor = SamWindows(model, layout, encoder_cache, cache_key)
    try:
        return sliding_window(image, layout.crop, overlap_stride(layout.crop, overlap), predictor,
                              batch=batch_size, pad="end", should_stop=should_stop)
    except Cancelled:
        raise Cancelled("pseudo-labelling stopped") from None


class SamWindows:
    """The SAM predictor of :func:`~.sliding.sliding_window`: windows -> stitch -> encoder ->
    decoder -> softmax -> unstitch; encoder outputs kept in ``encoder_cache`` by
    ``(cache_key, window corner)`` when one is given."""

    def __init__(self, model, layout: Layout, encoder_cache: "dict | None" = None, cache_key=None):
        self.model, self.plan = model, layout.plan()
        self.encoder_cache, self.cache_key = encoder_cache, cache_key
        self.device = next(model.parameters()).device
        self.frozen = encoder_store.frozen(model)

    def __call__(self, tiles: np.ndarray, corners) -> torch.Tensor:
        model, plan, cache, S = self.model, self.plan, self.encoder_cache, self.plan.canvas
        n, K = len(corners), model.num_masks
        keys = [(self.cache_key, tuple(c)) for c in corners]
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            if cache is not None and all(k in cache for k in keys):
                emb = torch.cat([cache[k] for k in keys]).to(self.device).float()
            else:
                canv = stitch(tiles, plan, fill=0.0, mode="bilinear")  # [n, slabs, S, S]
                t = torch.from_numpy(np.ascontiguousarray(canv, dtype=np.float32)).reshape(-1, 1, S, S)
                emb = model.encode(t.expand(-1, 3, -1, -1).to(self.device))
                if self.frozen:  # decoded as stored and as stage F's training cache has them: fp16
                    emb = emb.float().to(torch.float16).float()
                if cache is not None:
                    per = emb.cpu().to(torch.float16).reshape(n, plan.slabs, *emb.shape[1:])
                    for k, e in zip(keys, per):
                        cache[k] = e
            logits = model.upsample(model.decode(emb))
        probs = torch.softmax(logits.float(), dim=1).reshape(n, plan.slabs, K, S, S).transpose(1, 2)
        return unstitch(probs.cpu(), plan, mode="bilinear")  # [n, K, cd, ch, cw]


def read_pseudo_index(out_dir: "str | os.PathLike") -> dict:
    return read_json(Path(out_dir) / PSEUDO_JSON, "pseudo-label index", missing={})


def check_model_classes(meta: dict, project: Project, model_dir: Path) -> None:
    """Refuse, in one line, a SAM model fine-tuned for other classes (another project's model)."""
    classes = meta.get("classes")
    if isinstance(classes, list) and list(classes) != list(project.classes):
        raise SFRError(f"this SAM model was fine-tuned on project {meta.get('project')!r} for classes "
                       f"{', '.join(map(str, classes))}; project {project.name or project.root.name!r} has "
                       f"{', '.join(project.classes)}: fine-tune a model for this project", model_dir)


def pseudolabel(
    project: Project,
    model_dir: "str | os.PathLike",
    out_dir: "str | os.PathLike",
    cases: "Sequence[str] | None" = None,
    device: str = "auto",
    should_stop: "Callable[[], bool] | None" = None,
    overlap: float = SAM_OVERLAP,
    batch_size: int = 4,
    embeddings_dir: "str | os.PathLike | None" = None,
) -> dict:
    """Pseudo-label ``cases`` (default: every unlabeled case); returns the per-case records.

    ``embeddings_dir``: for a frozen-encoder model, the :class:`~.encoder_store.EncoderStore`
    folder whose embeddings are reused and extended (the encoder then runs once per image and
    encoder, whatever decoder follows); ignored for a model with a LoRA-adapted encoder.

    Under ``torchrun`` the cases are split over the processes (:mod:`.shard`): each writes its
    cases' files, and the main process writes ``pseudo-labels.json`` once all are done; every
    process returns all the records."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    overlap = check_overlap(overlap)
    names = [c.name for c in project.by_role("unlabeled")] if cases is None else list(cases)
    selected = [project.case(n) for n in names]
    check_model_classes(read_model_meta(model_dir), project, model_dir)
    # inputs are sacred (io.check_output): no image or label of the project, and no file outside
    # out_dir (io.inside), before any work
    check_outputs(inside(out_dir, f"{c.name}{suffix}") for c in selected for suffix in (".nii.gz", "_confidence.nii.gz"))
    with sharded(device) as shard:
        sizes = voxel_counts({c.name: project.image_path(c) for c in selected}) if shard.world > 1 else {}
        mine = set(shard.mine(names, sizes))
        own = [c for c in selected if c.name in mine]
        model = load_sam_model(model_dir, shard.device)
        store = None
        if embeddings_dir is not None and encoder_store.frozen(model):
            store = encoder_store.EncoderStore(embeddings_dir, model)
        index = _index_header(project, model, model_dir, out_dir)
        if shard.main:
            events.stage("pseudolabel", "start", cases=len(selected), device=str(shard.device), processes=shard.world)
            events.log(f"pseudo-labelling {len(selected)} case(s) with {model.meta['model_id']} on "
                       f"{describe_device(shard.device)}"
                       + (f" and {shard.world - 1} more process(es)" if shard.world > 1 else ""))
        out_dir.mkdir(parents=True, exist_ok=True)
        bar = events.Progress("pseudolabel", len(own)) if shard.main else None
        results = {}
        for i, case in enumerate(own):
            if should_stop is not None and should_stop():
                events.stage("pseudolabel", "cancelled", done=i)
                raise Cancelled(f"pseudo-labelling stopped after {i} of {len(own)} cases")
            record = _pseudolabel_case(project, case, model, out_dir, overlap, batch_size, should_stop, store)
            results[case.name] = record
            if shard.world == 1:  # the index follows every case (what a cancelled run leaves)
                index["cases"][case.name] = record
                index["updated"] = utcnow()
                write_json_atomic(out_dir / PSEUDO_JSON, index)
            if bar is not None:
                bar.update(i + 1, case=case.name, mean_confidence=record["mean_confidence"])
        shard.report("pseudolabel", list(results))
        if shard.world > 1:
            for part in shard.gather(results):
                results.update(part)
            results = {n: results[n] for n in names}
            if shard.main:
                index["cases"].update(results)
                index["updated"] = utcnow()
                write_json_atomic(out_dir / PSEUDO_JSON, index)
            shard.gather(None)  # nobody returns before the index is written
    if shard.main:
        events.stage("pseudolabel", "done", out_dir=str(out_dir), cases=len(results))
    return results


def _index_header(project: Project, model, model_dir: Path, out_dir: Path) -> dict:
    """``pseudo-labels.json`` as it is, with this model and project recorded."""
    index = read_pseudo_index(out_dir)
    index.update(
        schema_version=1,
        model_id=model.meta["model_id"],
        model_dir=str(model_dir.resolve()),
        model_metadata_mtime=(model_dir / MODEL_META).stat().st_mtime,
        project=project.name or project.root.name,
        project_root=str(project.root.resolve()),
    )
    index.setdefault("cases", {})
    return index


def _pseudolabel_case(project: Project, case, model, out_dir: Path, overlap: float, batch_size: int,
                      should_stop, store=None) -> dict:
    """Write one case's label and confidence map; return its index record."""
    image_path = project.image_path(case)
    image = read_image(image_path)
    cache = stored = None
    if store is not None:
        stored = store.name(case.name, sha256_file(image_path), overlap)
        cache = {(None, corner): emb for corner, emb in store.load(stored).items()}
        known = len(cache)
    probs = predict_probabilities(model, image, overlap=overlap, batch_size=batch_size, should_stop=should_stop,
                                  encoder_cache=cache)
    if store is not None and len(cache) > known:
        if not store.save(stored, {corner: emb for (_, corner), emb in cache.items()}):
            events.log(f"{case.name}: window embeddings not stored ({store.folder} holds its limit, "
                       f"{encoder_store.MAX_BYTES / 1024**3:.0f} GiB); later rounds encode this case again")
    label = probs.argmax(axis=0).astype(np.uint8)
    confidence = probs.max(axis=0).astype(np.float32)
    np.clip(confidence, 0.0, 1.0, out=confidence)
    label_file = f"{case.name}.nii.gz"
    conf_file = f"{case.name}_confidence.nii.gz"
    write_volume(image.with_array(label), inside(out_dir, label_file))
    write_volume(image.with_array(confidence), inside(out_dir, conf_file))
    record = {
        "image": str(image_path.resolve()),
        "image_sha256": sha256_file(image_path),
        "label": label_file,
        "confidence": conf_file,
        "mean_confidence": round(float(confidence.mean()), 6),
        "model_id": model.meta["model_id"],
        "created": utcnow(),
    }
    if store is not None:  # windows whose encoder pass came from the store / was computed now
        record["embeddings"] = {"file": stored, "reused": known, "computed": len(cache) - known}
    return record
