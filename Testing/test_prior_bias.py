"""Stage R starts every class where it can learn: the output bias at the labeled cases' log class
priors.  The first loss is at most ln K (the priors' entropy), and on the real bundled sample a
short run with the fast budget's V-Net predicts every class from the start (issue 20, item 4)."""

from __future__ import annotations

import json
import math

import torch

from SFRSegmenterLib.commands.demo import make_demo_project
from SFRSegmenterLib.retrain import RetrainConfig, retrain
from SFRSegmenterLib.retrain.networks import build_network, init_output_bias
from SFRSegmenterLib.run.budget import FAST


def test_first_cross_entropy_is_the_priors_entropy_at_most_ln_k(one_torch_thread):
    priors = [0.93, 0.03, 0.04]
    torch.manual_seed(0)
    losses = {}
    for with_prior in (False, True):
        torch.manual_seed(0)
        net = build_network("vnet", 1, 3, **FAST["vnet_options"])
        if with_prior:
            bias = init_output_bias(net, priors)
            assert abs(sum(bias)) < 1e-4 and bias[0] > bias[2] > bias[1]
        g = torch.Generator().manual_seed(1)
        x = torch.randn(2, 1, 16, 32, 32, generator=g)
        y = torch.multinomial(torch.tensor(priors), 2 * 16 * 32 * 32, replacement=True, generator=g).reshape(2, 16, 32, 32)
        with torch.no_grad():
            losses[with_prior] = float(torch.nn.functional.cross_entropy(net(x), y))
    entropy = -sum(p * math.log(p) for p in priors)
    assert losses[True] < math.log(3) and abs(losses[True] - entropy) < 0.1, losses
    assert losses[True] < losses[False]


def test_short_run_on_the_sample_predicts_every_class_from_the_start(tmp_path, one_torch_thread):
    project = make_demo_project(tmp_path / "p", 2)
    cfg = RetrainConfig(ssl="supervised", use_sam=False, iterations=60, device="cpu", save_every=1000,
                        **FAST["vnet_options"])
    out = retrain(project, cfg, pseudo_dir=project.root / "pseudo", out_dir=tmp_path / "vnet")
    meta = json.loads((out / "meta.json").read_text())
    assert len(meta["prior_bias"]) == 3 and 0 < meta["class_priors"][1] < 0.1
    bal = meta["class_balance"]
    assert bal["iterations"] == 60
    assert bal["absent_fraction"] <= 0.10, bal  # no class predicted nowhere for over 10 % of the steps


def test_head_lr_scale_moves_only_the_zero_started_head_layers_faster(one_torch_thread):
    """``head_lr_scale``: the last layer of each class head (started at zero) in its own optimiser
    group at lr x scale; every other trainable parameter keeps lr; 1 keeps a single group."""
    from SFRSegmenterLib.finetune import param_groups
    from SFRSegmenterLib.sam import build_segmenter
    from SFRSegmenterLib.sam.model import zero_started

    torch.manual_seed(0)
    model = build_segmenter("tiny_test", num_classes=3, lora_rank=0)
    heads = zero_started(model)
    assert heads and all(float(p.detach().abs().max()) == 0 for p in heads)
    assert len(param_groups(model, 1.0)) == 1
    groups = param_groups(model, 10.0)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(len(g["params"]) for g in groups) == len(trainable)
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in heads} and groups[1]["lr_scale"] == 10.0
