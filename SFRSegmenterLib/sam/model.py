"""The prompt-free SAM segmenter: image encoder -> mask decoder with one mask per class.

No prompt is given: the decoder sees the prompt encoder's "no mask" embedding and its
positional encoding, and its mask tokens are resized to ``num_classes + 1`` (background
included).  Tokens and hypernetwork heads start as copies of the pretrained ones, but the last
layer of every head starts at zero, so every class starts at logit 0 (uniform softmax, first
cross-entropy ln K): a copied head would start at the pretrained token's "no object" bias and
the first steps would swing between all-foreground and all-background (docs/stage-f.md).  SAM's
heads have no additive term, so the decoder gets one per class (``class_bias``, zero unless
fine-tuning sets it to the training labels' log priors: :func:`init_class_bias`).  The output is low-resolution
logits ``[B, K, 4h, 4w]`` (``h x w`` = image embedding size); :meth:`SamSegmenter.logits`
upsamples them bilinearly to the canvas.
"""

from __future__ import annotations

import copy
import functools

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as torch_checkpoint
from torch import nn


class SamSegmenter(nn.Module):
    def __init__(self, image_encoder: nn.Module, prompt_encoder: nn.Module, mask_decoder: nn.Module, canvas: int):
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.canvas = int(canvas)
        #: Filled by the builders / loaders: backbone name, metadata, stitching layout.
        self.meta: dict = {}

    @property
    def num_masks(self) -> int:
        return int(self.mask_decoder.num_mask_tokens)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images [B, 3, S, S]`` -> low-resolution logits ``[B, K, s, s]``."""
        return self.decode(self.encode(images))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``images [B, 3, S, S]`` -> image embeddings ``[B, C, h, w]`` (contiguous: the encoder's
        convolutions keep their weights channels-last, see :func:`.build.build_segmenter`)."""
        return self.image_encoder(images).contiguous()

    def decode(self, emb: torch.Tensor) -> torch.Tensor:
        """Image embeddings ``[B, C, h, w]`` -> low-resolution logits ``[B, K, 4h, 4w]``."""
        b, c, h, w = emb.shape
        dec = self.mask_decoder
        dense = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).to(emb.dtype)
        pos = self.prompt_encoder.get_dense_pe().to(emb.dtype).expand(b, -1, -1, -1)
        tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        tokens = tokens.unsqueeze(0).expand(b, -1, -1).to(emb.dtype)
        hs, src = dec.transformer(emb + dense, pos, tokens)
        mask_tokens_out = hs[:, 1 : 1 + dec.num_mask_tokens, :]
        up = dec.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)], dim=1
        )
        bu, cu, hu, wu = up.shape
        out = (hyper @ up.reshape(bu, cu, hu * wu)).reshape(bu, -1, hu, wu)
        bias = getattr(dec, "class_bias", None)
        return out if bias is None else out + bias.reshape(1, -1, 1, 1).to(out.dtype)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits at canvas resolution (bilinear upsampling of the low-resolution output)."""
        return self.upsample(self(images))

    def upsample(self, low: torch.Tensor) -> torch.Tensor:
        return F.interpolate(low.float(), size=(self.canvas, self.canvas), mode="bilinear", align_corners=False)


def resize_mask_tokens(decoder: nn.Module, k: int) -> None:
    """Give ``decoder`` ``k`` mask tokens and hypernetwork heads, copying pretrained ones."""
    n = decoder.num_mask_tokens
    old_tokens = decoder.mask_tokens.weight.detach()
    old_mlps = decoder.output_hypernetworks_mlps
    order = [i % n for i in range(k)]
    tokens = nn.Embedding(k, old_tokens.shape[1])
    with torch.no_grad():
        tokens.weight.copy_(old_tokens[order])
    decoder.mask_tokens = tokens
    heads = nn.ModuleList([copy.deepcopy(old_mlps[i]) for i in order])
    for head in heads:
        last = head.layers[-1]
        with torch.no_grad():
            last.weight.zero_()
            if last.bias is not None:
                last.bias.zero_()
    decoder.output_hypernetworks_mlps = heads
    decoder.num_mask_tokens = k
    # one additive logit per class (saved with the decoder's parts); 0 changes nothing
    decoder.class_bias = nn.Parameter(torch.zeros(k))
    # The IoU head scores prompted masks; prompt-free segmentation does not use it.
    decoder.iou_prediction_head = None


def zero_started(model: "SamSegmenter") -> list:
    """The parameters :func:`resize_mask_tokens` starts at zero: the last layer of each class's head."""
    return [p for head in model.mask_decoder.output_hypernetworks_mlps for p in head.layers[-1].parameters()]


#: The parameter the class priors go to; models saved before it existed load with zeros.
CLASS_BIAS = "mask_decoder.class_bias"


def init_class_bias(model: "SamSegmenter", priors) -> list:
    """Set the per-class logit offset to the centred log ``priors`` (fractions of the training
    pixels per class), so the first softmax is the label distribution and the first steps learn
    where the classes are instead of how frequent they are (as stage R's output bias,
    retrain/networks.init_output_bias).  Returns the offsets set."""
    from ..losses import log_prior_logits

    bias = log_prior_logits(priors)
    target = model.mask_decoder.class_bias
    if target.numel() != bias.numel():
        raise ValueError(f"{bias.numel()} priors for {target.numel()} classes")
    with torch.no_grad():
        target.copy_(bias)
    return [round(float(v), 6) for v in bias]


def encoder_blocks(encoder: nn.Module) -> list:
    """The transformer blocks of a SAM ViT (``blocks``) or TinyViT (``layers[i].blocks``)."""
    if hasattr(encoder, "blocks"):
        return list(encoder.blocks)
    blocks = []
    for layer in getattr(encoder, "layers", []):
        blocks.extend(getattr(layer, "blocks", []))
    return blocks


def set_grad_checkpointing(model: SamSegmenter, on: bool = True) -> int:
    """Recompute encoder block activations in the backward pass (saves memory)."""
    n = 0
    for block in encoder_blocks(model.image_encoder):
        if on and "forward" not in block.__dict__:
            plain = block.forward

            def ckpt_forward(*args, _plain=plain, _block=block):
                # the encoder runs in eval mode while LoRA trains (see train_mode): checkpoint
                # whenever a backward pass will follow
                if torch.is_grad_enabled():
                    return torch_checkpoint.checkpoint(_plain, *args, use_reentrant=False)
                return _plain(*args)

            block.forward = functools.partial(ckpt_forward)
            n += 1
        elif not on and "forward" in block.__dict__:
            del block.forward
    return n


def trainable_parts(model: SamSegmenter) -> dict:
    """The state saved after fine-tuning: LoRA, prompt encoder and mask decoder."""
    state = model.state_dict()
    return {
        k: v.detach().cpu().clone()
        for k, v in state.items()
        if ".lora_" in k or k.startswith(("prompt_encoder.", "mask_decoder."))
    }


def set_trainable(model: SamSegmenter) -> list:
    """Freeze the encoder except LoRA; train prompt encoder and decoder.  Returns the params."""
    for name, p in model.named_parameters():
        p.requires_grad_(".lora_" in name or name.startswith(("prompt_encoder.", "mask_decoder.")))
    return [p for p in model.parameters() if p.requires_grad]


def train_mode(model: SamSegmenter) -> SamSegmenter:
    """Put ``model`` in training mode for fine-tuning, the frozen image encoder excepted.

    The encoder's own weights never change (only LoRA adds to them), so its BatchNorm, Dropout
    and DropPath layers must behave as at inference: in training mode TinyViT's BatchNorm layers
    would normalise with the statistics of the current small batch (and drift their running
    statistics, which are never saved), so fine-tuning would see other embeddings than
    pseudo-labelling.  Mode does not affect LoRA, which keeps training.
    """
    model.train()
    model.image_encoder.eval()
    return model
