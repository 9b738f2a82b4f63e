"""``sfr run``: the whole SFR / SFR+ pipeline as one resumable job, in four parts.

* :mod:`.config`: :class:`RunConfig` (what a run depends on) and its translation to the stage
  configurations, checked before a run folder exists;
* :mod:`.cache`: content keys and the reuse of finished stages and of single cases, knowing
  nothing of SAM or V-Nets;
* :mod:`.pipeline`: the wiring: which stage reads what, each stage a few lines around a library
  call (stage F, pseudo-labels, stage R, review); the SFR+ decisions come from :mod:`..sfrplus`;
* :mod:`.job`: one run in one process: lock, status, signals, logs, failure classification;
  :mod:`.distributed` makes stage R's and the pseudo-labels' library calls on N torchrun
  processes (``--processes``).

Nothing is imported here, so ``from SFRSegmenterLib.run import config`` loads no torch.
"""
