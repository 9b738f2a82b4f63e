"""sfr report: a self-contained HTML report of a run."""

from __future__ import annotations

from pathlib import Path

from .. import jobs
from ..errors import SFRError
from ._options import add_overwrite
from ..runfolder import RunFolder


def add_parser(sub) -> None:
    p = sub.add_parser(
        "report",
        help="write a self-contained HTML report of a run (figures embedded)",
        description="RUN is a run folder (PROJECT/runs/<id>) or a project folder (its latest run). "
        "The page holds the stitched mosaic, pseudo-label overlays, confidence maps and flagged "
        "slices of each case, loss curves, per-stage times and the metrics when ground truth exists.",
    )
    p.add_argument("run", help="run folder, or project folder for its latest run")
    p.add_argument("--out", help="HTML file to write (default RUN/report.html)")
    add_overwrite(p)
    p.set_defaults(func=run)


def resolve_run(path) -> Path:
    path = Path(path)
    if not path.exists():
        raise SFRError("not found", path)
    if RunFolder(path).config.exists():
        jobs.check_run_id(path.resolve().name, path)  # a run folder is named by its id
        return path
    if (path / "sfr-project.json").exists():
        return jobs.run_dir(path)
    raise SFRError("neither a run folder nor a project folder", path)


def run(args) -> int:
    from ..report import write_report

    from ..io import guard_output

    run_dir = resolve_run(args.run)
    if args.out:  # a file of the user's choosing: replaced only if sfr wrote it (or --overwrite)
        guard_output(args.out, args.overwrite, file=True, related=[run_dir])
    out = write_report(run_dir, args.out)  # its inputs are protected by the report
    print(out)
    return 0
