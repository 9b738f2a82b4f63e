"""The collapse guard: per-class predicted vs true foreground during training.

A training stage feeds :class:`ClassBalance` the logits and targets of every iteration.  It keeps,
per foreground class, the fraction of (valid) voxels the network predicts as that class (argmax)
and the fraction the targets give it, reports both with the progress events (so the log, the
event stream and the report see them), and calls it a *collapse* when a class present in the
targets is predicted nowhere for a long stretch of iterations: a WARNING in the log (and so in the
report), and ``collapsed`` in the summary the stage saves with its model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import events


def stretch_limit(iterations: int) -> int:
    """Iterations a class may stay unpredicted before it counts as collapsed: a fifth of the run,
    at least 25.  A stretch that starts in the first quarter of the run is allowed twice that:
    training starts from nothing, background wins the early steps and classes flicker in and out
    while the network learns to tell them apart."""
    return max(25, int(iterations) // 5)


@dataclass
class _ClassTrack:
    name: str
    run: int = 0  # current stretch: consecutive iterations present in the targets, predicted nowhere
    run_start: int = 0
    longest: int = 0
    absent: int = 0  # iterations present in the targets and predicted nowhere, in all
    warned: bool = False
    recovered_at: "int | None" = None  # first iteration predicted again after the warning
    pred: list = field(default_factory=list)
    true: list = field(default_factory=list)


class ClassBalance:
    """Watches one training stage; ``update`` once per iteration, ``summary`` at the end."""

    def __init__(self, stage: str, classes, iterations: int, ignore_index: "int | None" = None):
        self.stage = stage
        self.classes = list(classes)
        self.limit = stretch_limit(iterations)
        self.warmup = int(iterations) // 4
        self.ignore_index = ignore_index
        self.tracks = [_ClassTrack(str(n)) for n in self.classes[1:]]

    def fractions(self, logits, target) -> tuple:
        """(predicted, true) fractions of each foreground class over the valid voxels."""
        import torch

        with torch.no_grad():
            pred = logits.detach().argmax(1)
            tgt = target.detach()
            if self.ignore_index is not None:
                valid = tgt != self.ignore_index
                pred, tgt = pred[valid], tgt[valid]
            n = max(1, int(tgt.numel()))
            k = len(self.classes)
            p = torch.bincount(pred.reshape(-1), minlength=k)[:k].double() / n
            t = torch.bincount(tgt.reshape(-1).long().clamp(0, k - 1), minlength=k)[:k].double() / n
        return p[1:].cpu().numpy(), t[1:].cpu().numpy()

    def update(self, iteration: int, logits, target) -> dict:
        """Record one iteration; returns the progress-event fields (``fg_pred``, ``fg_true``)."""
        pred, true = self.fractions(logits, target)
        for c, track in enumerate(self.tracks):
            track.pred.append(float(pred[c]))
            track.true.append(float(true[c]))
            if true[c] > 0 and pred[c] == 0:
                if track.run == 0:
                    track.run_start = iteration
                track.run += 1
                track.absent += 1
                track.longest = max(track.longest, track.run)
                allowed = self.limit * (2 if track.run_start < self.warmup else 1)
                if track.run >= allowed and not track.warned:
                    track.warned = True
                    self._tell(track, "collapsed", iteration,
                               f"predicted nowhere for {track.run} iterations ({track.run_start + 1}-"
                               f"{iteration + 1}) although the targets contain it", "warning")
            elif pred[c] > 0:
                track.run = 0
                if track.warned and track.recovered_at is None:
                    track.recovered_at = iteration + 1
                    self._tell(track, "recovered", iteration, f"predicted again from iteration {iteration + 1}")
        return {"fg_pred": [round(float(v), 5) for v in pred], "fg_true": [round(float(v), 5) for v in true]}

    def _tell(self, track: _ClassTrack, state: str, iteration: int, detail: str, level: str = "info") -> None:
        """A line in the log and a ``collapse`` event (what the report lists)."""
        message = f"{self.stage}: class '{track.name}' {state}: {detail}"
        events.log(message, level)
        events.emit("collapse", stage=self.stage, cls=track.name, state=state, iteration=iteration + 1,
                    message=message)

    def summary(self) -> dict:
        """What the stage saves with its model: per class the mean predicted and true fractions
        over the last tenth of training, the longest unpredicted stretch, whether it was warned
        about, and the verdict: ``collapsed`` when it was and is still predicted nowhere in the
        last tenth although the targets there contain it (a class that came back is
        ``recovered_at`` that iteration, not collapsed)."""
        out = {"limit": self.limit, "classes": {}}
        for t in self.tracks:
            tail = max(1, len(t.pred) // 10)
            pred, true = (float(np.mean(v[-tail:])) if v else 0.0 for v in (t.pred, t.true))
            out["classes"][t.name] = {
                "pred_fraction": round(pred, 5),
                "true_fraction": round(true, 5),
                "longest_unpredicted": t.longest,
                "absent_iterations": t.absent,
                "absent_fraction": round(t.absent / max(1, len(t.pred)), 4),
                "warned": t.warned,
                "recovered_at": t.recovered_at,
                "collapsed": t.warned and pred == 0.0 and true > 0.0,
            }
        out["collapsed"] = [n for n, v in out["classes"].items() if v["collapsed"]]
        out["iterations"] = max((len(t.pred) for t in self.tracks), default=0)
        # the worst class: the fraction of the stage's iterations it was predicted nowhere
        out["absent_fraction"] = max((v["absent_fraction"] for v in out["classes"].values()), default=0.0)
        return out
