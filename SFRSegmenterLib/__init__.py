"""SFR Segmenter engine: Stitch, Fine-tune SAM, Re-train a 3D network (SFR / SFR+).

Array convention (used everywhere in the engine, stated once here):

* Volumes are numpy arrays (or torch tensors) indexed ``[z, y, x]`` = ``(D, H, W)``,
  the order ``SimpleITK.GetArrayFromImage`` returns.  Axis 0 is the slice axis: stitching
  lays out ``volume[k]`` (a ``H x W`` slice) for k = 0..D-1.
* Per-class maps put the class axis first: ``[C, z, y, x]``; batches add a leading ``B``.
* Geometry (``spacing``, ``origin``, ``direction``) is kept in ITK physical order
  ``(x, y, z)`` exactly as SimpleITK reports it.  ``Volume.spacing_zyx`` gives the spacing
  in array order, which is what distance metrics need.
* Crop and window sizes on the command line are given in array order ``D H W``.
"""

__version__ = "0.1.0"

from .errors import SFRError  # noqa: E402,F401
