"""Subcommands of ``sfr``; see :mod:`SFRSegmenterLib.cli`."""
