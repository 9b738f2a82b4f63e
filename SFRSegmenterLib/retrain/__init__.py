"""Stage R: re-train a 3D network semi-supervised with SAM pseudo-labels; sliding-window inference.

Public API::

    from SFRSegmenterLib.retrain import RetrainConfig, retrain, load_model, predict_volume, predict_folder
"""

from .inference import load_model, predict_folder, predict_volume  # noqa: F401
from .networks import NETWORKS, build_network, count_parameters, register_network  # noqa: F401
from .ssl import SSL_METHODS, SSLMethod, register_method  # noqa: F401
from .train import RetrainConfig, retrain  # noqa: F401
