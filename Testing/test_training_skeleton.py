"""The resume skeleton both training stages share: when to save, what makes another run, reading
a saved state."""

from __future__ import annotations

import pytest
import torch

from SFRSegmenterLib.errors import SFRError
from SFRSegmenterLib.training import check_same_run, differences, read_state, save_due


def test_save_points_of_both_stages():
    # stage F: every 2 and at the end; stage R: save_every 0 saves only at the end
    assert [d for d in range(1, 8) if save_due(d, 2, 7)] == [2, 4, 6, 7]
    assert [d for d in range(1, 8) if save_due(d, 0, 7)] == [7]


def test_another_run_is_one_line_naming_what_differs(tmp_path):
    diffs = differences({"lr": 0.001, "seed": 1, "layout": {"grid": [4, 4]}},
                        {"lr": 0.002, "seed": 1, "layout": {"grid": [9, 9], "crop": list(range(40))}})
    assert diffs == ["lr 0.001 vs 0.002", "layout"]
    with pytest.raises(SFRError, match=r"different run \(lr 0.001 vs 0.002, layout\)") as err:
        check_same_run(diffs, tmp_path / "checkpoint.pt")
    assert str(tmp_path / "checkpoint.pt") in str(err.value)
    check_same_run([], tmp_path)  # the same run: nothing to say


def test_read_state_refuses_damaged_and_unsafe_files(tmp_path):
    good = tmp_path / "state.pt"
    torch.save({"iteration": 3, "w": torch.ones(2)}, good)
    assert read_state(good)["iteration"] == 3
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(SFRError, match="cannot read checkpoint"):
        read_state(empty)
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"cfg": _Custom()}, unsafe)  # needs a Python class to unpickle: refused
    with pytest.raises(SFRError, match="cannot read training state"):
        read_state(unsafe, "training state")


class _Custom:
    pass
