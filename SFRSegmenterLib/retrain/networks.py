"""3D networks for re-training: the SFR paper's V-Net and a 3D U-Net, behind a registry.

Both take ``[B, C_in, D, H, W]`` and return logits ``[B, K, D, H, W]``.  Every spatial size must
be a multiple of 16 (four 2x down-samplings); :func:`required_multiple` says so to callers.

V-Net (Milletari et al. 2016, in the configuration used by UA-MT / SFR): filters 16-32-64-128-256,
1-2-3-3-3 convolutions per encoder stage and 3-3-2-1 per decoder stage, 3x3x3 convolutions with
batch norm and ReLU, each stage residual (its input is added to its output), 2x2x2 strided
convolutions down and transposed convolutions up, skip connections by addition, dropout before
the bottleneck's decoder path and before the output convolution.  With 1 input channel and 2
classes it has 9,448,866 parameters (the paper's "about 9.45 M").
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .names import NETWORK_NAMES  # noqa: E402  (one list, shared with the CLI)
from .names import NORM_NAMES as NORMS  # noqa: E402


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batchnorm":
        return nn.BatchNorm3d(channels)
    if kind == "instancenorm":
        return nn.InstanceNorm3d(channels, affine=True)
    if kind == "groupnorm":
        return nn.GroupNorm(max(1, channels // 16), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown normalization {kind!r} (choose from {', '.join(NORMS)})")


class Stage(nn.Module):
    """``n`` (conv 3x3x3 -> norm -> ReLU) layers; residual adds the stage input before the last ReLU."""

    def __init__(self, n: int, c_in: int, c_out: int, norm: str, residual: bool):
        super().__init__()
        layers = []
        for i in range(n):
            layers.append(nn.Conv3d(c_in if i == 0 else c_out, c_out, 3, padding=1))
            layers.append(_norm(norm, c_out))
            if i < n - 1 or not residual:
                layers.append(nn.ReLU(inplace=True))
        self.body = nn.Sequential(*layers)
        self.residual = residual and c_in == c_out
        self.act = nn.ReLU(inplace=True) if residual else nn.Identity()

    def forward(self, x):
        y = self.body(x)
        if self.residual:
            y = y + x
        return self.act(y)


def _down(c_in, c_out, norm):
    return nn.Sequential(nn.Conv3d(c_in, c_out, 2, stride=2), _norm(norm, c_out), nn.ReLU(inplace=True))


def _up(c_in, c_out, norm):
    return nn.Sequential(nn.ConvTranspose3d(c_in, c_out, 2, stride=2), _norm(norm, c_out), nn.ReLU(inplace=True))


class VNet(nn.Module):
    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        filters: int = 16,
        norm: str = "batchnorm",
        dropout: float = 0.5,
        residual: bool = True,
    ):
        super().__init__()
        f = filters
        self.enc = nn.ModuleList(
            [
                Stage(1, in_channels, f, norm, residual and in_channels == f),
                Stage(2, 2 * f, 2 * f, norm, residual),
                Stage(3, 4 * f, 4 * f, norm, residual),
                Stage(3, 8 * f, 8 * f, norm, residual),
                Stage(3, 16 * f, 16 * f, norm, residual),
            ]
        )
        self.down = nn.ModuleList([_down(f * 2**i, f * 2 ** (i + 1), norm) for i in range(4)])
        self.up = nn.ModuleList([_up(f * 2 ** (i + 1), f * 2**i, norm) for i in (3, 2, 1, 0)])
        self.dec = nn.ModuleList(
            [
                Stage(3, 8 * f, 8 * f, norm, residual),
                Stage(3, 4 * f, 4 * f, norm, residual),
                Stage(2, 2 * f, 2 * f, norm, residual),
                Stage(1, f, f, norm, residual),
            ]
        )
        self.out = nn.Conv3d(f, num_classes, 1)
        self.dropout = nn.Dropout3d(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x):
        skips = []
        for i, stage in enumerate(self.enc):
            x = stage(x)
            if i < 4:
                skips.append(x)
                x = self.down[i](x)
        x = self.dropout(x)
        for up, stage, skip in zip(self.up, self.dec, reversed(skips)):
            x = stage(up(x) + skip)
        return self.out(self.dropout(x))


class _DoubleConv(nn.Sequential):
    def __init__(self, c_in, c_out, norm):
        super().__init__(
            nn.Conv3d(c_in, c_out, 3, padding=1), _norm(norm, c_out), nn.ReLU(inplace=True),
            nn.Conv3d(c_out, c_out, 3, padding=1), _norm(norm, c_out), nn.ReLU(inplace=True),
        )


class UNet3D(nn.Module):
    """A plain 3D U-Net (Cicek et al. 2016 layout): filters 16-32-64-128-256, max-pool down,
    transposed convolutions up, skip connections by concatenation, dropout at the bottleneck."""

    def __init__(self, in_channels=1, num_classes=2, filters=16, norm="batchnorm", dropout=0.5, residual=False):
        super().__init__()
        f = [filters * 2**i for i in range(5)]
        self.enc = nn.ModuleList([_DoubleConv(in_channels, f[0], norm)] + [_DoubleConv(f[i], f[i + 1], norm) for i in range(4)])
        self.pool = nn.MaxPool3d(2)
        self.up = nn.ModuleList([nn.ConvTranspose3d(f[i + 1], f[i], 2, stride=2) for i in (3, 2, 1, 0)])
        self.dec = nn.ModuleList([_DoubleConv(2 * f[i], f[i], norm) for i in (3, 2, 1, 0)])
        self.out = nn.Conv3d(f[0], num_classes, 1)
        self.dropout = nn.Dropout3d(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x):
        skips = []
        for i, block in enumerate(self.enc):
            x = block(x)
            if i < 4:
                skips.append(x)
                x = self.pool(x)
        x = self.dropout(x)
        for up, block, skip in zip(self.up, self.dec, reversed(skips)):
            x = block(torch.cat([up(x), skip], dim=1))
        return self.out(x)


#: name -> constructor(in_channels, num_classes, **options)
#: The built-in networks, in the order of ``names.NETWORK_NAMES`` (the list the command line offers).
NETWORKS: dict[str, Callable[..., nn.Module]] = dict(zip(NETWORK_NAMES, (VNet, UNet3D), strict=True))


def register_network(name: str, factory: Callable[..., nn.Module]) -> None:
    """Add a network: ``factory(in_channels=, num_classes=, filters=, norm=, dropout=, residual=)``."""
    NETWORKS[name] = factory


def build_network(name: str, in_channels: int = 1, num_classes: int = 2, **options) -> nn.Module:
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r} (choose from {', '.join(NETWORKS)})")
    return NETWORKS[name](in_channels=in_channels, num_classes=num_classes, **options)


def init_output_bias(model: nn.Module, priors) -> list:
    """Set the output convolution's bias to the log class priors (centred), so the first
    softmax predicts every voxel with the labeled cases' class frequencies: the first loss is the
    priors' entropy (at most ln K) and no early step is spent pulling the bias toward background.
    Returns the bias set."""
    from ..losses import log_prior_logits

    bias = log_prior_logits(priors)
    out = getattr(model, "out", None)
    if not isinstance(out, nn.Conv3d) or out.bias is None or out.bias.numel() != bias.numel():
        raise ValueError(f"{type(model).__name__} has no output convolution with {bias.numel()} biases")
    with torch.no_grad():
        out.bias.copy_(bias)
    return [round(float(v), 4) for v in bias]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def required_multiple(name: str) -> int:
    """Spatial sizes fed to the network must be multiples of this."""
    return 16
