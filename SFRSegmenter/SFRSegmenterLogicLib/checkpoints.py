"""A ViT backbone's missing checkpoint, offered for download with the engine's URL and sha256.

:func:`download_offer` decides whether Run offers a download: the chosen backbone needs an
official file (the engine's registry, ``SFRSegmenterLib.sam.registry``, gives its URL and
sha256), no other file was given, and the file is not in the engine's cache
(``sam.checkpoints.cache_dir()``) yet.  :func:`download_job` fetches it with the engine's own
checksummed download (``sam.checkpoints.fetch_verified``, as ``download_official`` uses it) in a short child process
(``python -m SFRSegmenterLogicLib.checkpoints NAME DIR``) through the panel's runner, so Slicer
stays responsive and the file appears in the cache only once its sha256 matches (a temporary
sibling, renamed when checked; another checksum leaves nothing there).

Slicer's own downloaders were not used: ``slicer.util.downloadFile`` reads in the GUI thread and
leaves a file with a wrong checksum at its target, and ``SampleData.SampleDataLogic
.downloadFileIntoCache`` writes into Slicer's cache, not where the engine looks.  Nothing here
imports Qt or torch.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from .runner import SubprocessRunner, logic_environment, python_executable
from .tasks import CommandJob, Step, failure_reason


#: Where the panel takes a checkpoint file the user has.
CHECKPOINT_FIELD = "Settings > Checkpoint"


@dataclass(frozen=True)
class Offer:
    """An official checkpoint a run needs and may download."""

    backbone: str
    name: str  # the official file name (what the engine looks for in its cache)
    url: str
    sha256: str
    size: "int | None"  # bytes, when the registry knows it
    dest: Path  # where the engine looks for it


def download_offer(settings) -> "Offer | None":
    """What Run offers to download for ``settings`` (``runcontrol.RunSettings``), or None: for a
    test-only or bundled backbone, a checkpoint file given in Settings, a file already in the
    cache, or a file whose URL the engine does not know (MedSAM ViT-B)."""
    from SFRSegmenterLib.sam.checkpoints import KNOWN_CHECKPOINTS, cache_dir
    from SFRSegmenterLib.sam.registry import get_spec

    spec = get_spec(settings.backbone)
    if spec.test_only or spec.bundled or settings.checkpoint or not spec.checkpoint_name:
        return None
    sha256, size, url = KNOWN_CHECKPOINTS.get(spec.checkpoint_name, (None, None, None))
    dest = cache_dir() / spec.checkpoint_name
    if not url or not sha256 or dest.exists():
        return None
    return Offer(spec.name, spec.checkpoint_name, url, sha256, size, dest)


def offer_question(offer: Offer) -> str:
    """The question Run asks before downloading (English; the widget marks its own texts)."""
    size = f" ({offer.size / 2**20:.0f} MB)" if offer.size else ""
    return (f"The {offer.backbone} backbone needs the official checkpoint {offer.name}{size}, which is not on "
            f"this computer.\n\nDownload it now from\n  {offer.url}\ninto\n  {offer.dest.parent}?\n\n"
            f"It is kept only if its sha256 is {offer.sha256}. Slicer stays usable meanwhile; press Run SFR "
            f"again once it is there. (Or choose a file you have under {CHECKPOINT_FIELD}.)")


def show_download_line(line: str):
    """The child's JSON events as the panel shows them: progress on the status line, messages
    in the log; other lines as they are."""
    try:
        event = json.loads(line) if line.startswith("{") else None
    except ValueError:
        event = None
    if not isinstance(event, dict):
        return ("log", line) if line.strip() else None
    if event.get("event") == "progress":
        mb, total = event.get("mb"), int(event.get("total") or 0)
        return "status", f"downloading: {mb} of {total / 2**20:.0f} MB" if total > 1 else f"downloading: {mb} MB"
    if event.get("event") == "log":
        return "log", str(event.get("message"))
    return None


def download_job(offer: Offer, runner_factory=SubprocessRunner, python: "str | None" = None) -> CommandJob:
    """The job that downloads ``offer`` (not started)."""
    args = [python or python_executable(), "-m", "SFRSegmenterLogicLib.checkpoints", offer.name,
            str(offer.dest.parent)]
    step = Step(f"downloading {offer.name}", args, env=logic_environment(), failure=failure_reason,
                show=show_download_line)
    return CommandJob([step], runner_factory, what=f"Checkpoint {offer.name}")


def download_outcome(job: CommandJob, offer: Offer) -> str:
    """One line for the panel once the download ended."""
    if job.state != "done":
        return f"Downloading the checkpoint failed: {job.error or 'see the log'}"
    return (f"Checkpoint {offer.name} downloaded and checked (sha256) into {offer.dest.parent}. "
            "Press Run SFR to start.")


def _main(argv) -> int:
    """``NAME DIR``: download the official file NAME into DIR with the engine's checksummed copy
    (``sam.checkpoints.fetch_verified``); one ``error:`` line in the panel's words and exit 2 on a
    failure."""
    from SFRSegmenterLib import events
    from SFRSegmenterLib.errors import SFRError
    from SFRSegmenterLib.sam.checkpoints import KNOWN_CHECKPOINTS, fetch_verified

    events.configure("json")
    try:
        if len(argv) != 2 or not (KNOWN_CHECKPOINTS.get(argv[0]) or (None, None, None))[2]:
            raise SFRError("usage: NAME DIR, NAME one of "
                           + ", ".join(name for name, known in KNOWN_CHECKPOINTS.items() if known[2]))
        sha256, size, url = KNOWN_CHECKPOINTS[argv[0]]
        try:
            path = fetch_verified(url, sha256, Path(argv[1]) / argv[0], size)
        except OSError as exc:
            raise SFRError(f"could not download it ({exc}); check the internet connection, or choose a file you "
                           f"have under {CHECKPOINT_FIELD}", url) from None
    except SFRError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    events.emit("result", path=str(path))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
