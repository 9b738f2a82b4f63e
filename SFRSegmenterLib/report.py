"""A self-contained HTML report of one run (every picture a base64 PNG inside the page).

Contents: summary, the stitched mosaic SAM was trained on, the review table, for each case its
flagged slices (image with the pseudo-label outline, ground truth when known, next to the
confidence map with the low-confidence voxels), per-slice confidence curves, loss curves,
per-stage times, SFR+ rounds and the metrics table when ground truth exists.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np

from .errors import SFRError
from .io import read_image, read_json, read_label, write_text_atomic
from .report_template import CSS, TEMPLATE

#: Cases shown with pictures (the least confident first); the tables list every case.
MAX_CASES = 12
SLICES_PER_CASE = 3
GT_COLOR = (255, 210, 0)
LOWCONF_COLOR = (255, 0, 255)


def _json(path: Path, default=None):
    """A run file's contents; ``default`` when it is missing or damaged (the report shows what is there)."""
    return read_json(path, missing=default, damaged=default)


def _png_b64(rgb: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _fig_b64(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _upscale(rgb: np.ndarray, target: int = 180) -> np.ndarray:
    f = max(1, int(target // max(rgb.shape[:2])))
    return np.repeat(np.repeat(rgb, f, axis=0), f, axis=1) if f > 1 else rgb


def _heat(conf2d: np.ndarray, low2d: np.ndarray, lo: float = 0.5) -> np.ndarray:
    """Confidence ``lo``..1 as a colour map (dark = unsure), low-confidence voxels outlined."""
    from matplotlib import colormaps

    from .visual import outline

    x = np.clip((conf2d - lo) / (1.0 - lo), 0, 1)
    rgb = (colormaps["inferno"](x)[..., :3] * 255).astype(np.uint8)
    edge = outline(low2d.astype(np.int64))
    rgb[edge] = LOWCONF_COLOR
    return rgb


def _overlay(gray_u8: np.ndarray, label: np.ndarray, gt: "np.ndarray | None") -> np.ndarray:
    from .visual import outline, overlay_rgb

    rgb = overlay_rgb(gray_u8, label)
    if gt is not None:
        edge = outline((gt > 0).astype(np.int64))
        rgb[edge & ~outline(label.astype(np.int64))] = GT_COLOR
    return rgb


def _slice_tiles(image, label, conf, low, gt, indices, lo: float = 0.5) -> np.ndarray:
    from .visual import side_by_side, to_uint8

    gray = to_uint8(image)
    tiles = []
    for z in indices:
        tiles.append(_upscale(_overlay(gray[z], label[z], None if gt is None else gt[z])))
        tiles.append(_upscale(_heat(conf[z], low[z], lo)))
    return side_by_side(tiles, gap=6, value=255)


def _events(events_path: Path):
    """The records of events.jsonl, in order (a line cut by a kill is skipped)."""
    if not events_path.exists():
        return
    with open(events_path, encoding="utf-8") as fh:
        for line in fh:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def _progress_series(events_path: Path, field: str = "loss") -> dict:
    """{pipeline stage: [(step, value of ``field``)]} from events.jsonl (the latest attempt of
    each step)."""
    series: dict = {}
    current = None
    for rec in _events(events_path):
        if rec.get("event") == "stage" and rec.get("pipeline") and rec.get("status") == "start":
            current = rec.get("stage")
        elif rec.get("event") == "progress" and field in rec and current:
            value = rec[field]
            try:
                value = [float(v) for v in value] if isinstance(value, list) else float(value)
                series.setdefault(current, {})[int(rec["step"])] = value
            except (TypeError, ValueError):
                pass
    return {k: sorted(v.items()) for k, v in series.items()}


def _loss_series(events_path: Path) -> dict:
    return _progress_series(events_path, "loss")


def _collapse_warnings(events_path: Path) -> list:
    """The collapse warnings of the run's training stages and the recoveries that followed, in
    order (messages as logged)."""
    return [str(rec.get("message")) for rec in _events(events_path) if rec.get("event") == "collapse"]


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _num(v, fmt="{:.2f}") -> str:
    return "-" if v is None else fmt.format(v)


def _row(cells: list, bold=()) -> dict:
    """A table row: plain values (escaped by the template), ``bold`` the indices shown bold."""
    return {"cells": ["" if c is None else c for c in cells], "bold": set(bold)}


def render(context: dict) -> str:
    """The page for ``context`` (every string autoescaped)."""
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return env.from_string(TEMPLATE).render(css=CSS, **context)


def _project_of(run: Path, cfg: dict):
    """The run's project, refused unless it is the project that holds the run folder."""
    from .manifest import load_project

    recorded = cfg.get("project")
    holder = run.resolve().parent.parent  # PROJECT/runs/<id>
    if not recorded:
        raise SFRError("config.json does not name the run's project", run / "config.json")
    recorded_path = Path(recorded)
    if not recorded_path.is_absolute() and recorded_path.name == holder.name:
        recorded_path = holder  # a run from before config.json held the absolute path
    if recorded_path.resolve() != holder or not (holder / "sfr-project.json").is_file():
        raise SFRError(f"the run belongs to project {recorded}, but lies in {holder}: moved or copied runs "
                       "cannot be reported (their project's images are elsewhere)", run / "config.json")
    return load_project(holder)


def build_report(run_path: "str | Path") -> str:
    """The report of ``run_path`` as one HTML string."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(run_path)
    cfg = _json(run / "config.json")
    if cfg is None:
        raise SFRError("not a run folder (no config.json)", run)
    review = _json(run / "review.json")
    if review is None:
        raise SFRError("the run has not finished (no review.json); see 'sfr status'", run)
    status = _json(run / "status.json", {}) or {}
    stages = _json(run / "stages.json", {}) or {}
    rounds = _json(run / "rounds.json", {}) or {}
    metrics = _json(run / "metrics.json", {}) or {}
    slices = _json(run / "slices.json", {}) or {}
    project = _project_of(run, cfg)
    ctx: dict = {}

    # ---------------------------------------------------------------- summary
    cases = review["cases"]
    total_s = sum(float(r.get("seconds") or 0) for r in stages.values())
    ctx.update(run_name=run.name, project_name=project.name or project.root.name,
               n_labeled=len(project.by_role("labeled")), n_unlabeled=len(project.by_role("unlabeled")),
               n_validation=len(project.by_role("validation")), mode="SFR+" if cfg.get("sfr_plus") else "SFR",
               resolved_rounds=cfg.get("resolved_rounds", 0), tau=cfg.get("tau"),
               state=str(status.get("state", "?")), compute_min=total_s / 60,
               n_trusted=sum(1 for c in cases if c["trusted"]), n_cases=len(cases))
    pm = (metrics.get("pseudo_labels") or {}).get("mean")
    ctx["pseudo_mean"] = {"dice": _pct(pm.get("dice")), "hd95": _num(pm.get("hd95_mm"))} if pm else None

    # ---------------------------------------------------------------- review table
    dice_by_case = {}
    for r in (metrics.get("pseudo_labels") or {}).get("cases", []):
        dice_by_case.setdefault(r["case"], []).append(r.get("dice"))
    order = sorted(cases, key=lambda c: c["confidence"])
    rows = []
    for c in order:
        flagged = ", ".join(f"{f['index']} ({100 * f['confidence']:.0f}%)" for f in c["flagged_slices"])
        d = [v for v in dice_by_case.get(c["case"], []) if v is not None]
        rows.append(_row([c["case"], f"{100 * c['confidence']:.2f} %", "yes" if c["trusted"] else "no", flagged,
                          c["low_confidence_voxels"], _pct(float(np.mean(d))) if d else "-"],
                         bold=() if c["trusted"] else (2,)))
    ctx["review_rows"] = rows

    # ---------------------------------------------------------------- mosaic
    mosaics = sorted((run / "stages" / "stitch").glob("*.png"))
    ctx["mosaic"] = None
    if mosaics:
        from PIL import Image

        m = mosaics[0]
        arr = np.asarray(Image.open(m).convert("RGB"))
        ctx["mosaic"] = {"name": m.stem, "b64": _png_b64(arr), "width": min(720, arr.shape[1] * 2)}

    # ---------------------------------------------------------------- per-case pictures
    ctx.update(chance_pct=100 / max(2, project.num_classes), max_cases=MAX_CASES)
    pictures = []
    pseudo = run / "pseudo"
    for c in order[:MAX_CASES]:
        name = c["case"]
        try:
            case = project.case(name)
            img = read_image(project.image_path(case)).array
            label = read_label(pseudo / f"{name}.nii.gz").array
            conf = read_image(pseudo / f"{name}_confidence.nii.gz").array
            low = read_label(pseudo / f"{name}_lowconf.nii.gz").array > 0
            gt_path = project.label_path(case) if case.label else None
            gt = read_label(gt_path).array if gt_path and gt_path.exists() else None
        except SFRError as exc:
            pictures.append({"name": name, "error": str(exc)})
            continue
        idx = [f["index"] for f in c["flagged_slices"][:SLICES_PER_CASE]]
        if not idx:
            fg = np.flatnonzero(label.reshape(label.shape[0], -1).any(axis=1))
            idx = [int(fg[len(fg) // 2])] if fg.size else [label.shape[0] // 2]
        tiles = _slice_tiles(img, label, conf, low, gt, idx, lo=1.0 / max(2, project.num_classes))
        pictures.append({"name": name, "error": None, "confidence": f"{100 * c['confidence']:.2f}",
                         "slices": ", ".join(map(str, idx)), "b64": _png_b64(tiles)})
    ctx["case_pictures"] = pictures

    # ---------------------------------------------------------------- per-slice confidence
    ctx["slice_fig"] = None
    if slices:
        fig, ax = plt.subplots(figsize=(8, 3))
        for c in order[:MAX_CASES]:
            sc = (slices.get(c["case"]) or {}).get("slice_confidence") or []
            ys = np.array([np.nan if v is None else v for v in sc], dtype=float)
            line, = ax.plot(np.arange(len(ys)), ys, lw=1, label=c["case"])
            for f in c["flagged_slices"]:
                ax.plot(f["index"], f["confidence"], "o", color=line.get_color(), ms=4)
        ax.set_xlabel("slice index (array axis 0)")
        ax.set_ylabel("mean confidence near structure")
        ax.legend(fontsize=6, ncol=3)
        ax.grid(alpha=0.3)
        ctx["slice_fig"] = _fig_b64(fig)

    # ---------------------------------------------------------------- losses
    ctx["loss_fig"] = None
    series = _loss_series(run / "events.jsonl")
    if series:
        kinds = [("finetune", "SAM fine-tuning"), ("retrain", "V-Net re-training")]
        fig, axes = plt.subplots(1, 2, figsize=(9, 3))
        for ax, (prefix, title) in zip(axes, kinds):
            for name, pts in series.items():
                if name.startswith(prefix) and pts:
                    s, l = zip(*pts)
                    ax.plot(s, l, lw=1, label=name)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("iteration")
            ax.set_ylabel("loss")
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=7)
        ctx["loss_fig"] = _fig_b64(fig)

    # ---------------------------------------------------------------- class balance
    ctx["balance_fig"] = None
    pred_series = _progress_series(run / "events.jsonl", "fg_pred")
    true_series = _progress_series(run / "events.jsonl", "fg_true")
    if pred_series:
        names = [n for n in pred_series if n.startswith(("finetune", "retrain"))]
        fig, axes = plt.subplots(1, max(1, len(names)), figsize=(3.2 * max(1, len(names)), 2.8), squeeze=False)
        classes = list(project.classes)[1:]
        for ax, name in zip(axes[0], names):
            steps = [s for s, _ in pred_series[name]]
            pred = np.array([v for _, v in pred_series[name]], dtype=float)
            truth = dict(true_series.get(name, []))
            for c in range(pred.shape[1] if pred.ndim == 2 else 0):
                line, = ax.plot(steps, 100 * pred[:, c], lw=1, label=str(classes[c]) if c < len(classes) else str(c + 1))
                t = [100 * truth[s][c] for s in steps if s in truth]
                if t:
                    ax.axhline(float(np.mean(t)), color=line.get_color(), ls="--", lw=0.8)
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("iteration")
            ax.set_ylabel("predicted foreground %")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        ctx["balance_fig"] = _fig_b64(fig)
    ctx["warnings"] = _collapse_warnings(run / "events.jsonl")

    # ---------------------------------------------------------------- times
    ctx["stage_fig"], ctx["stage_rows"] = None, []
    if stages:
        names = list(stages)
        secs = [float(stages[n].get("seconds") or 0) for n in names]
        fig, ax = plt.subplots(figsize=(7, 0.3 * len(names) + 0.8))
        ax.barh(names[::-1], secs[::-1], color="#4a7ab5")
        for i, n in enumerate(names[::-1]):
            if stages[n].get("reused_from"):
                ax.text(0, i, " reused", va="center", fontsize=7)
        ax.set_xlabel("seconds")
        ctx["stage_fig"] = _fig_b64(fig)
        ctx["stage_rows"] = [_row([n, stages[n].get("status"), f"{float(stages[n].get('seconds') or 0):.1f}",
                                   stages[n].get("reused_from") or ""]) for n in names]

    # ---------------------------------------------------------------- rounds
    ctx["round_rows"] = []
    for r in rounds.get("rounds") or []:
        ratio = r.get("structure_ratio")
        note = r.get("stopped", "")
        if r.get("drift"):
            note = "structure drift: not published"
        ctx["round_rows"].append(_row([
            r["round"], len(r.get("trusted", [])), f"{100 * r['mean_confidence']:.3f}",
            "-" if ratio is None else f"{ratio:.2f}", _pct(r.get("mean_dice")), _pct(r.get("mean_sam_dice")),
            ", ".join(r.get("moved_to_trusted", [])) or "-", ", ".join(r.get("moved_to_untrusted", [])) or "-", note]))
    ctx["final_round"] = rounds.get("final_round", "-")

    # ---------------------------------------------------------------- metrics
    ctx["metric_tables"] = []
    for key, title in (("pseudo_labels", "Pseudo-labels (unlabeled cases, hidden ground truth)"),
                       ("validation", "Validation cases (held out, final V-Net)")):
        m = metrics.get(key)
        if not m:
            continue
        rows = [_row([r["case"], r.get("class"), _pct(r.get("dice")), _pct(r.get("jaccard")),
                      _num(r.get("hd95_mm")), _num(r.get("asd_mm"))]) for r in m["cases"]]
        mean = m.get("mean", {})
        rows.append(_row(["mean", "", _pct(mean.get("dice")), _pct(mean.get("jaccard")),
                          _num(mean.get("hd95_mm")), _num(mean.get("asd_mm"))], bold=(0, 2)))
        ctx["metric_tables"].append({"title": title, "rows": rows})

    from .report_budget import budget_context

    ctx.update(budget_context(run, cfg, stages))
    ctx["config_json"] = json.dumps(cfg, indent=1)
    return render(ctx)


def _inputs(run: Path) -> list:
    """The files the report reads: no ``--out`` may name one of them."""
    names = ("config.json", "review.json", "status.json", "stages.json", "rounds.json", "metrics.json",
             "slices.json", "events.jsonl", "log.txt")
    files = [run / n for n in names]
    files += [p for p in (run / "pseudo").glob("*") if p.is_file()]
    files += list((run / "stages" / "stitch").glob("*.png"))
    return files


def write_report(run_path: "str | Path", out: "str | Path | None" = None) -> Path:
    from .io import check_output, protecting

    run = Path(run_path)
    out = Path(out) if out else run / "report.html"
    with protecting(_inputs(run), "a file of the run this report reads"):
        check_output(out)  # before the work
        text = build_report(run)
        write_text_atomic(out, text)
    return out
