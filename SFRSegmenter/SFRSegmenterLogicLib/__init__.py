"""Plain-Python logic of the SFRSegmenter Slicer module (MRML, processes, dependencies).

Imports only ``slicer`` (MRML), ``vtk``, ``numpy`` and the engine, so it is testable with
pytest on ``slicer-core``; the Qt widget in ``SFRSegmenter.py`` is a thin layer over it.
"""
