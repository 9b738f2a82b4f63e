"""Stitching plans and the exact stitch/unstitch round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from SFRSegmenterLib.stitching import IGNORE_INDEX, StitchPlan, make_plan, stitch, unstitch


def test_la_crop_layout_on_1024_canvas():
    # LA crop 112x112x80 (x, y, z) = array (80, 112, 112)
    plan = make_plan((80, 112, 112), 1024)
    assert (plan.rows, plan.cols, plan.slabs) == (9, 9, 1)
    assert plan.cell == (114, 114) and plan.pad == (1, 1)
    # 9 * 114 = 1026 px: one pad pixel cut on each side, nothing of the slices lost
    assert plan.offset == (-1, -1)
    x = np.random.default_rng(0).random((80, 112, 112), dtype=np.float32)
    canvas = stitch(x, plan)
    assert canvas.shape == (1, 1024, 1024)
    # the 81st cell is empty (zeros for an image)
    _, y0, x0, y1, x1 = plan.cell_box(79)
    assert np.array_equal(canvas[0, y0:y1, x0:x1], x[79])
    assert not canvas[0, 8 * 114 :, 8 * 114 :].any()


def test_96_cube_layout():
    plan = make_plan((96, 96, 96), 1024)
    assert (plan.rows, plan.cols, plan.slabs) == (10, 10, 1)
    assert plan.cell == (102, 102) and plan.pad == (3, 3) and plan.offset == (2, 2)


def test_slices_in_order_row_by_row():
    plan = make_plan((80, 112, 112), 1024)
    vol = np.broadcast_to(np.arange(80, dtype=np.float32)[:, None, None] + 1, (80, 112, 112))
    canvas = stitch(np.ascontiguousarray(vol), plan)[0]
    for k in (0, 1, 8, 9, 40, 79):
        slab, y0, x0, y1, x1 = plan.cell_box(k)
        assert slab == 0
        assert (canvas[y0:y1, x0:x1] == k + 1).all()
        assert (y0 - plan.offset[0] - plan.pad[0]) // plan.cell[0] == k // 9
        assert (x0 - plan.offset[1] - plan.pad[1]) // plan.cell[1] == k % 9


def test_label_padding_is_ignore_index():
    plan = make_plan((5, 20, 30), 256)
    lab = np.ones((5, 20, 30), np.uint8)
    canvas = stitch(lab, plan, fill=IGNORE_INDEX)
    assert set(np.unique(canvas)) == {1, IGNORE_INDEX}
    assert int((canvas == 1).sum()) == lab.size


def test_slabs_when_canvas_is_too_small():
    plan = make_plan((88, 140, 183), 256)  # one 140x183 slice per 256 canvas
    assert plan.slabs == 88 and plan.cells_per_slab == 1
    x = np.random.default_rng(1).random((88, 140, 183))
    assert np.array_equal(unstitch(stitch(x, plan), plan), x)


def test_scaled_grid_for_small_canvas():
    plan = make_plan((88, 140, 183), 256, grid=(4, 4))
    assert (plan.rows, plan.cols) == (4, 4) and plan.slabs == 6
    assert not plan.is_native and plan.scaled[1] <= 64
    x = np.random.default_rng(2).random((2, 88, 140, 183)).astype(np.float32)
    back = unstitch(stitch(x, plan), plan)
    assert back.shape == x.shape
    smooth = np.broadcast_to(np.linspace(0, 1, 183, dtype=np.float32), (88, 140, 183))
    back = unstitch(stitch(np.ascontiguousarray(smooth), plan), plan)
    assert np.abs(back - smooth).max() < 0.02
    lab = (np.random.default_rng(3).random((88, 140, 183)) > 0.5).astype(np.uint8)
    labs = stitch(lab, plan, fill=IGNORE_INDEX, mode="nearest")
    assert set(np.unique(labs)) <= {0, 1, IGNORE_INDEX}
    assert set(np.unique(unstitch(labs, plan, mode="nearest"))) <= {0, 1}


def test_plan_json_round_trip():
    plan = make_plan((80, 112, 112), 1024)
    d = plan.to_dict()
    for key in ("rows", "cols", "cell", "pad", "slabs"):
        assert key in d
    assert StitchPlan.from_dict(d) == plan


def test_torch_batched_and_dtype_preserved():
    plan = make_plan((30, 40, 50), 256)
    x = torch.rand(2, 3, 30, 40, 50)  # batch and class axes
    canvas = stitch(x, plan)
    assert canvas.shape == (2, 3, plan.slabs, 256, 256) and canvas.dtype == torch.float32
    assert torch.equal(unstitch(canvas, plan), x)
    lab = torch.randint(0, 3, (2, 30, 40, 50), dtype=torch.uint8)
    assert torch.equal(unstitch(stitch(lab, plan, fill=IGNORE_INDEX), plan), lab)


def test_shape_mismatch_is_an_error():
    plan = make_plan((30, 40, 50), 256)
    with pytest.raises(ValueError, match="does not match plan"):
        stitch(np.zeros((31, 40, 50)), plan)
    with pytest.raises(ValueError, match="does not fit"):
        make_plan((3, 300, 20), 256)


@settings(max_examples=60, deadline=None)
@given(
    d=st.integers(1, 70),
    h=st.integers(1, 130),
    w=st.integers(1, 130),
    canvas=st.sampled_from([128, 256, 512, 1024]),
    lead=st.sampled_from([(), (2,), (1, 3)]),
    use_torch=st.booleans(),
    pad=st.one_of(st.none(), st.integers(0, 3)),
)
def test_unstitch_inverts_stitch_exactly(d, h, w, canvas, lead, use_torch, pad):
    if h > canvas or w > canvas:
        return
    try:
        plan = make_plan((d, h, w), canvas, pad=pad)
    except ValueError:
        assert pad is not None  # only a user-fixed pad may fail to fit
        return
    rng = np.random.default_rng(d * 1000 + h * 10 + w)
    x = rng.random(lead + (d, h, w)).astype(np.float32)
    if use_torch:
        x = torch.from_numpy(x)
    canvases = stitch(x, plan)
    assert tuple(canvases.shape) == lead + (plan.slabs, canvas, canvas)
    back = unstitch(canvases, plan)
    if use_torch:
        assert torch.equal(back, x)
    else:
        assert np.array_equal(back, x)
    # every voxel appears exactly once on the canvases
    assert int((canvases != 0).sum()) == int((x != 0).sum())
