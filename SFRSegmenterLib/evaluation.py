"""Evaluate predicted label maps against ground truth, matched by case name."""

from __future__ import annotations

from pathlib import Path

from . import events
from .errors import SFRError
from .io import case_name, read_label, volume_entry
from .metrics import METRIC_KEYS, label_metrics, mean_metrics

#: Files written next to predictions that are not predictions.
AUX_SUFFIXES = ("_confidence", "_lowconf", "_probabilities")


def _volumes(folder: Path, what: str, skip_aux: bool) -> dict:
    if not folder.is_dir():
        raise SFRError(f"{what} folder not found", folder)
    out = {}
    for p in sorted(folder.iterdir()):
        if not volume_entry(p):
            continue
        name = case_name(p)
        if skip_aux and name.endswith(AUX_SUFFIXES):
            continue
        if name in out:
            raise SFRError(f"duplicate case name {name!r} ({out[name].name} and {p.name})", folder)
        out[name] = p
    return out


def evaluate_folders(pred_dir, gt_dir, cases=None) -> dict:
    """Metrics of every prediction in ``pred_dir`` that has a ground truth in ``gt_dir``."""
    preds = _volumes(Path(pred_dir), "prediction", True)
    gts = _volumes(Path(gt_dir), "ground truth", False)
    names = [n for n in preds if n in gts] if cases is None else list(cases)
    if not names:
        raise SFRError(f"no prediction has a ground truth of the same name in {gt_dir}", pred_dir)
    return evaluate_pairs([(n, preds[n], gts[n]) for n in names], unmatched=sorted(set(preds) - set(gts)))


def evaluate_pairs(pairs, unmatched=()) -> dict:
    """``pairs``: (case, prediction path, ground-truth path).  Returns the JSON report."""
    rows = []
    bar = events.Progress("evaluate", len(pairs))
    for i, (name, pred_path, gt_path) in enumerate(pairs):
        gt = read_label(gt_path)
        pred = read_label(pred_path, reference=gt)
        for r in label_metrics(pred.array, gt.array, gt.spacing_zyx):
            rows.append({"case": name, **r})
        bar.update(i + 1, case=name)
    classes = sorted({r["class"] for r in rows})
    report = {"cases": rows, "mean": mean_metrics(rows)}
    if len(classes) > 1:
        report["mean_per_class"] = {
            str(c): mean_metrics([r for r in rows if r["class"] == c]) for c in classes
        }
    if unmatched:
        report["unmatched_predictions"] = list(unmatched)
    return report


def format_table(report: dict) -> str:
    """Per-case and mean table for a terminal."""
    multi = len({r["class"] for r in report["cases"]}) > 1
    head = ["case"] + (["class"] if multi else []) + ["Dice", "Jaccard", "95HD mm", "ASD mm", "95HD vox", "ASD vox"]
    lines = []

    def fmt(v, pct=False):
        if v is None:
            return "-"
        return f"{100 * v:.2f}" if pct else f"{v:.2f}"

    def row(name, cls, r):
        cells = [name] + ([str(cls)] if multi else [])
        cells += [fmt(r["dice"], True), fmt(r["jaccard"], True)]
        cells += [fmt(r[k]) for k in METRIC_KEYS[2:]]
        return cells

    body = [row(r["case"], r["class"], r) for r in report["cases"]]
    body.append(row("mean", "", report["mean"]))
    widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
    for cells in [head] + body:
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))))
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    notes = [f"{r['case']}: {r['reason']}" for r in report["cases"] if r.get("reason")]
    if notes:
        lines.append("not scored (distances undefined): " + "; ".join(notes))
    return "\n".join(lines)
