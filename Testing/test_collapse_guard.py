"""The collapse guard: per-class foreground fractions, and a WARNING when a class vanishes."""

from __future__ import annotations

import torch

from SFRSegmenterLib import events
from SFRSegmenterLib.collapse import ClassBalance, stretch_limit


def _logits_predicting(target: torch.Tensor, k: int, drop: "int | None") -> torch.Tensor:
    """Logits whose argmax is ``target`` except that class ``drop`` is predicted as background."""
    pred = target.clone()
    if drop is not None:
        pred[pred == drop] = 0
    return torch.nn.functional.one_hot(pred, k).movedim(-1, 1).float()


def test_fractions_ignore_padding():
    bal = ClassBalance("finetune", ["background", "a", "b"], 100, ignore_index=255)
    target = torch.tensor([[[0, 1, 2, 255]]])
    pred, true = bal.fractions(_logits_predicting(target.clamp(max=2), 3, None), target)
    assert list(true) == [1 / 3, 1 / 3] and list(pred) == [1 / 3, 1 / 3]


def test_a_vanished_class_is_a_warning_once_and_in_the_summary():
    seen = []
    events.add_sink(seen.append)
    try:
        n = 100
        bal = ClassBalance("retrain", ["background", "anterior", "posterior"], n)
        target = torch.zeros(2, 4, 4, 4, dtype=torch.long)
        target[:, :2, :2, :2] = 1
        target[:, 2:, 2:, 2:] = 2
        for it in range(n):
            fields = bal.update(it, _logits_predicting(target, 3, drop=1 if it >= 30 else None), target)
        summary = bal.summary()
    finally:
        events.remove_sink(seen.append)
    assert fields["fg_pred"] == [0.0, 0.125] and fields["fg_true"] == [0.125, 0.125]
    warnings = [r for r in seen if r["event"] == "log" and r["level"] == "warning"]
    assert len(warnings) == 1 and "'anterior' collapsed" in warnings[0]["message"]
    assert summary["collapsed"] == ["anterior"]
    assert summary["classes"]["anterior"]["longest_unpredicted"] == 70
    assert summary["classes"]["posterior"]["collapsed"] is False


def test_a_short_gap_is_not_a_collapse():
    bal = ClassBalance("finetune", ["background", "fg"], 400)
    target = torch.ones(1, 2, 2, dtype=torch.long)
    for it in range(400):
        bal.update(it, _logits_predicting(target, 2, drop=1 if it < stretch_limit(400) - 1 else None), target)
    assert bal.summary()["collapsed"] == []


def test_a_slow_start_is_not_a_collapse_but_never_predicting_is():
    target = torch.ones(1, 2, 2, dtype=torch.long)
    slow = ClassBalance("finetune", ["background", "fg"], 300)
    never = ClassBalance("finetune", ["background", "fg"], 300)
    for it in range(300):
        slow.update(it, _logits_predicting(target, 2, drop=1 if it < 90 else None), target)
        never.update(it, _logits_predicting(target, 2, drop=1), target)
    assert slow.summary()["collapsed"] == [] and never.summary()["collapsed"] == ["fg"]


def test_a_class_that_comes_back_is_recorded_as_recovered_not_collapsed():
    seen = []
    events.add_sink(seen.append)
    try:
        n = 400
        bal = ClassBalance("retrain", ["background", "anterior", "posterior"], n)
        target = torch.zeros(1, 4, 4, 4, dtype=torch.long)
        target[:, :2] = 1
        target[:, 2:, 2:] = 2
        for it in range(n):  # the demo V-Net's slow start: anterior predicted only from iteration 214
            bal.update(it, _logits_predicting(target, 3, drop=1 if it < 213 else None), target)
        summary = bal.summary()
    finally:
        events.remove_sink(seen.append)
    messages = [r["message"] for r in seen if r["event"] == "log"]
    assert any("'anterior' collapsed" in m for m in messages)
    assert any("'anterior' recovered: predicted again from iteration 214" in m for m in messages)
    assert summary["collapsed"] == [] and summary["classes"]["anterior"]["recovered_at"] == 214
    assert summary["classes"]["anterior"]["warned"] is True
    # the report lists the run's ``collapse`` events
    assert [(r["state"], r["iteration"]) for r in seen if r["event"] == "collapse"] == [("collapsed", 160), ("recovered", 214)]
