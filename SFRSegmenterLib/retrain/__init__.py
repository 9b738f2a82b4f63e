"""Stage R: re-train a 3D network semi-supervised with SAM pseudo-labels; sliding-window inference.

Public API::

    from SFRSegmenterLib.retrain import RetrainConfig, retrain, load_model, predict_volume, predict_folder

The names are loaded on first use, so that ``SFRSegmenterLib.retrain.names`` (and with it the
command line) does not import torch.
"""

import importlib

_EXPORTS = {
    "load_model": "inference",
    "predict_folder": "inference",
    "predict_volume": "inference",
    "NETWORKS": "networks",
    "build_network": "networks",
    "count_parameters": "networks",
    "register_network": "networks",
    "SSL_METHODS": "ssl",
    "SSLMethod": "ssl",
    "register_method": "ssl",
    "RetrainConfig": "config",
    "retrain": "train",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
