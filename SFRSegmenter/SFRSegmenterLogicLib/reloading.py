"""Slicer's Reload (developer mode) for a module whose logic lives in packages.

``slicer.util.reloadScriptedModule`` re-executes the module's own file only; the packages that
file imports stay in ``sys.modules``, so an edited logic or engine file would not be seen until
Slicer restarts.  :func:`forget_packages` removes them, so the module file's imports load them
again from disk.
"""

from __future__ import annotations

import importlib
import sys

#: The packages the module imports in Slicer's process.
PACKAGES = ("SFRSegmenterLogicLib", "SFRSegmenterLib")


def forget_packages(packages=None) -> list:
    """Remove ``packages`` (default :data:`PACKAGES`) and their submodules from ``sys.modules``;
    returns the names removed."""
    packages = PACKAGES if packages is None else tuple(packages)
    gone = sorted(name for name in list(sys.modules)
                  if any(name == p or name.startswith(p + ".") for p in packages))
    for name in gone:
        del sys.modules[name]
    importlib.invalidate_caches()
    return gone
