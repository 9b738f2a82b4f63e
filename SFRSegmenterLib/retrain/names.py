"""Built-in names of stage R's registries, importable without torch (for the command line)."""

NETWORK_NAMES = ("vnet", "unet3d")
NORM_NAMES = ("batchnorm", "instancenorm", "groupnorm", "none")
SSL_NAMES = ("supervised", "self_training", "mean_teacher", "ua_mt")
#: Stage R's spatial augmentation: auto = crop for several structures, rotflip for one.
AUGMENT_NAMES = ("auto", "rotflip", "crop")

#: A trained stage-R model folder: the weights file and the format tag written into it
#: (``train`` writes them, ``inference`` reads them).
MODEL_FILE = "model.pt"
FORMAT = "sfr-retrain-model"
