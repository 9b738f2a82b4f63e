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
from .runfolder import RunFolder

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
    """The run's project: the project that holds the run folder.  A project moved or renamed as
    a whole still reports its runs; a run copied into another project (its cases are not that
    project's) is refused."""
    from .manifest import load_project

    recorded = cfg.get("project")
    holder = run.resolve().parent.parent  # PROJECT/runs/<id>
    if not recorded:
        raise SFRError("config.json does not name the run's project", RunFolder(run).config)
    recorded_path = Path(recorded)
    if not recorded_path.is_absolute() and recorded_path.name == holder.name:
        recorded_path = holder  # a run from before config.json held the absolute path
    if not (holder / "sfr-project.json").is_file():
        raise SFRError(f"the run folder does not lie in a project (PROJECT/runs/<id>); it was made in project "
                       f"{recorded}", run / "config.json")
    project = load_project(holder)
    if recorded_path.resolve() != holder:  # moved or renamed: the same project only if it has the run's cases
        reviewed = {e.get("case") for e in (_json(run / "review.json", {}) or {}).get("cases", [])}
        missing = sorted(str(c) for c in reviewed - {c.name for c in project.cases})
        if missing:
            raise SFRError(f"the run belongs to project {recorded} and reviewed case(s) {', '.join(missing[:3])} "
                           f"that project {holder} does not have: a run copied between projects cannot be "
                           "reported", run / "config.json")
        absent = [c.name for c in project.cases if c.name in reviewed and not project.image_path(c).is_file()]
        if absent:
            raise SFRError(f"the run belongs to project {recorded}, but lies in {holder}, whose image(s) of case(s) "
                           f"{', '.join(absent[:3])} are not there: a copied run cannot be reported without its "
                           "project's images", run / "config.json")
    return project


def build_report(run_path: "str | Path") -> str:
    """The report of ``run_path`` as one HTML string: the run's records read once, then one step
    per section of the page, each returning its part of the template's context."""
    plt = _pyplot()
    run = Path(run_path)
    folder = RunFolder(run)
    cfg = _json(folder.config)
    if cfg is None:
        raise SFRError("not a run folder (no config.json)", run)
    review = _json(folder.review)
    if review is None:
        raise SFRError("the run has not finished (no review.json); see 'sfr status'", run)
    status = _json(folder.status, {}) or {}
    stages = _json(folder.stages, {}) or {}
    rounds = _json(folder.rounds, {}) or {}
    metrics = _json(folder.metrics, {}) or {}
    slices = _json(folder.slices, {}) or {}
    project = _project_of(run, cfg)
    cases = review["cases"]
    order = sorted(cases, key=_review_order)

    ctx: dict = {}
    ctx.update(_summary_section(run, cfg, status, stages, metrics, project, cases))
    ctx.update(_review_section(review, metrics, order))
    ctx.update(_mosaic_section(folder))
    ctx.update(_case_pictures_section(folder, project, order))
    ctx.update(_slice_confidence_section(plt, slices, order))
    ctx.update(_loss_section(plt, folder))
    ctx.update(_class_balance_section(plt, folder, project))
    ctx.update(_stage_times_section(plt, stages))
    ctx.update(_rounds_section(rounds, cfg))
    ctx.update(_metrics_section(metrics))

    from .report_budget import budget_context

    ctx.update(budget_context(run, cfg, stages))
    ctx["config_json"] = json.dumps(cfg, indent=1)
    return render(ctx)


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _summary_section(run: Path, cfg: dict, status: dict, stages: dict, metrics: dict, project, cases: list) -> dict:
    """The page's head: run, project, roles, mode, state, compute time, trusted count, mean Dice."""
    total_s = sum(float(r.get("seconds") or 0) for r in stages.values())
    ctx = dict(run_name=run.name, project_name=project.name or project.root.name,
               n_labeled=len(project.by_role("labeled")), n_unlabeled=len(project.by_role("unlabeled")),
               n_validation=len(project.by_role("validation")), mode="SFR+" if cfg.get("sfr_plus") else "SFR",
               resolved_rounds=cfg.get("resolved_rounds", 0), tau=cfg.get("tau"),
               state=str(status.get("state", "?")), compute_min=total_s / 60,
               n_trusted=sum(1 for c in cases if c["trusted"]), n_cases=len(cases))
    pm = (metrics.get("pseudo_labels") or {}).get("mean")
    ctx["pseudo_mean"] = {"dice": _pct(pm.get("dice")), "hd95": _num(pm.get("hd95_mm"))} if pm else None
    return ctx


def _review_section(review: dict, metrics: dict, order: list) -> dict:
    """The review table (in review order), the estimate's note and the label-next list."""
    cases = review["cases"]
    dice_by_case = {}
    for r in (metrics.get("pseudo_labels") or {}).get("cases", []):
        dice_by_case.setdefault(r["case"], []).append(r.get("dice"))
    rows = []
    for c in order:
        flagged = ", ".join(f"{f['index']} ({100 * f['confidence']:.0f}%)" for f in c["flagged_slices"])
        d = [v for v in dice_by_case.get(c["case"], []) if v is not None]
        rows.append(_row([c["case"], _pct(c.get("estimated_dice")), f"{100 * c['confidence']:.2f} %",
                          "yes" if c["trusted"] else "no", flagged, c["low_confidence_voxels"],
                          _pct(float(np.mean(d))) if d else "-"],
                         bold=() if c["trusted"] else (3,)))
    return {"review_rows": rows,
            "estimate_note": estimate_note(cases, review.get("estimate"), dice_by_case),
            "label_next_rows": [_row([n["rank"], n["case"], n["reason"]]) for n in review.get("label_next") or []][:10]}


def _mosaic_section(folder: RunFolder) -> dict:
    """The first stitched mosaic the run saved, embedded."""
    mosaics = folder.stitch_pictures
    if not mosaics:
        return {"mosaic": None}
    from PIL import Image

    m = mosaics[0]
    arr = np.asarray(Image.open(m).convert("RGB"))
    return {"mosaic": {"name": m.stem, "b64": _png_b64(arr), "width": min(720, arr.shape[1] * 2)}}


def _case_pictures_section(folder: RunFolder, project, order: list) -> dict:
    """For each of the first MAX_CASES cases: its flagged slices (or its middle foreground slice)
    with the label outline and the confidence map; a case whose files cannot be read shows why."""
    pictures = []
    for c in order[:MAX_CASES]:
        name = c["case"]
        try:
            case = project.case(name)
            img = read_image(project.image_path(case)).array
            label = read_label(folder.case_file(name)).array
            conf = read_image(folder.case_file(name, "confidence")).array
            low = read_label(folder.case_file(name, "lowconf")).array > 0
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
    return {"chance_pct": 100 / max(2, project.num_classes), "max_cases": MAX_CASES, "case_pictures": pictures}


def _slice_confidence_section(plt, slices: dict, order: list) -> dict:
    """Per-slice confidence curves of the first MAX_CASES cases, their flagged slices marked."""
    if not slices:
        return {"slice_fig": None}
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
    return {"slice_fig": _fig_b64(fig)}


def _loss_section(plt, folder: RunFolder) -> dict:
    """Loss curves of the training stages, SAM fine-tuning and V-Net re-training side by side."""
    series = _loss_series(folder.events)
    if not series:
        return {"loss_fig": None}
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
    return {"loss_fig": _fig_b64(fig)}


def _class_balance_section(plt, folder: RunFolder, project) -> dict:
    """Predicted foreground per class over each training stage against the targets' mean, and
    the collapse warnings."""
    ctx = {"balance_fig": None}
    pred_series = _progress_series(folder.events, "fg_pred")
    true_series = _progress_series(folder.events, "fg_true")
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
    ctx["warnings"] = _collapse_warnings(folder.events)
    return ctx


def _stage_times_section(plt, stages: dict) -> dict:
    """Seconds per stage (a bar chart, reused stages marked) and the stage table."""
    if not stages:
        return {"stage_fig": None, "stage_rows": []}
    names = list(stages)
    secs = [float(stages[n].get("seconds") or 0) for n in names]
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(names) + 0.8))
    ax.barh(names[::-1], secs[::-1], color="#4a7ab5")
    for i, n in enumerate(names[::-1]):
        if stages[n].get("reused_from"):
            ax.text(0, i, " reused", va="center", fontsize=7)
    ax.set_xlabel("seconds")
    return {"stage_fig": _fig_b64(fig),
            "stage_rows": [_row([n, stages[n].get("status"), f"{float(stages[n].get('seconds') or 0):.1f}",
                                 stages[n].get("reused_from") or ""]) for n in names]}


def _rounds_section(rounds: dict, cfg: dict) -> dict:
    """The SFR+ rounds table, the published round and the trust rule."""
    round_rows = []
    for r in rounds.get("rounds") or []:
        ratio = r.get("structure_ratio")
        note = "; ".join(x for x in (r.get("why", ""), r.get("stopped", "")) if x)
        if r.get("drift") and not r.get("why"):
            note = "structure drift: not published"
        round_rows.append(_row([
            r["round"], len(r.get("trusted", [])), _pct(r.get("mean_estimated_dice")), f"{100 * r['mean_confidence']:.3f}",
            "-" if ratio is None else f"{ratio:.2f}", _pct(r.get("mean_dice")), _pct(r.get("mean_sam_dice")),
            ", ".join(r.get("moved_to_trusted", [])) or "-", ", ".join(r.get("moved_to_untrusted", [])) or "-", note]))
    return {"round_rows": round_rows, "final_round": rounds.get("final_round", "-"),
            "trust_rule": rounds.get("trust") or f"case confidence >= tau {cfg.get('tau')}"}


def _metrics_section(metrics: dict) -> dict:
    """The metrics tables of the pseudo-labels and of the validation cases, each with its mean."""
    tables = []
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
        tables.append({"title": title, "rows": rows})
    return {"metric_tables": tables}


def _review_order(case: dict):
    """Lowest estimated Dice first; cases without an estimate after them, least confident first."""
    est = case.get("estimated_dice")
    return (est is None, est if est is not None else case["confidence"], case["case"])


def estimate_note(cases: list, calibration: "dict | None", dice_by_case: dict) -> str:
    """What the estimated Dice is and, where this run knows the true Dice (hidden labels), how
    close it came; otherwise where it was measured."""
    from .quality import accuracy

    if not any(c.get("estimated_dice") is not None for c in cases):
        return ("No quality estimate: no SAM pseudo-label to compare the V-Net with; trust falls back to the "
                "paper's rule (case confidence >= tau).")
    source = (calibration or {}).get("source", "agreement between the V-Net and SAM")
    text = (f"Estimated Dice: {source}, per class then averaged (SFRSegmenterLib/quality.py). ")
    truth = {c: float(np.mean([v for v in d if v is not None])) for c, d in dice_by_case.items()
             if any(v is not None for v in d)}
    known = [c for c in cases if c["case"] in truth and c.get("estimated_dice") is not None]
    if len(known) >= 3:
        acc = accuracy([c["estimated_dice"] for c in known], [truth[c["case"]] for c in known])
        rho = "-" if acc["spearman"] is None else f"{acc['spearman']:.2f}"
        text += (f"Against this run's hidden labels ({acc['cases']} cases): Spearman {rho}, "
                 f"mean absolute error {100 * acc['mae']:.1f} Dice points.")
    else:
        text += "Its accuracy on benchmark data: bench/results/quality_estimate.md."
    return text


def _inputs(run: Path) -> list:
    """The files the report reads: no ``--out`` may name one of them."""
    folder = RunFolder(run)
    files = [run / n for n in RunFolder.RECORDS]
    files += [p for p in folder.pseudo.glob("*") if p.is_file()]
    files += folder.stitch_pictures
    return files


def write_report(run_path: "str | Path", out: "str | Path | None" = None) -> Path:
    from .io import check_output, protecting

    run = Path(run_path)
    out = Path(out) if out else RunFolder(run).report
    with protecting(_inputs(run), "a file of the run this report reads"):
        check_output(out)  # before the work
        text = build_report(run)
        write_text_atomic(out, text)
    return out
