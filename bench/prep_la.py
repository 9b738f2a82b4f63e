"""Build an SFR project from the LA data set without copying the volumes.

    python bench/prep_la.py OUT --labeled 16 [--validation 16] [--data ../shared/data/la]

Cases follow ``train.list`` (the order used by UA-MT / SFR: the first N are "the N labeled
cases"); the last ``--validation`` cases are held out for validation.  The manifest stores the
data set's absolute paths.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from SFRSegmenterLib.errors import SFRError  # noqa: E402
from SFRSegmenterLib.manifest import init_project  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "la"


def prepare(out, labeled: int, validation: int = 16, data=DEFAULT_DATA, force: bool = False):
    data = Path(data)
    return init_project(
        out,
        data / "images",
        labels=data / "labels",
        cases=data / "train.list",
        labeled=labeled,
        validation=validation,
        classes="background,left_atrium",
        force=force,
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="project folder to create")
    ap.add_argument("--labeled", type=int, required=True, help="first N cases of train.list keep their label")
    ap.add_argument("--validation", type=int, default=16, help="last N cases are validation (default 16)")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="LA data folder (images/, labels/, train.list)")
    ap.add_argument("--force", action="store_true", help="replace an existing manifest")
    args = ap.parse_args(argv)
    try:
        project = prepare(args.out, args.labeled, args.validation, args.data, args.force)
    except SFRError as exc:
        print(f"prep_la: error: {exc}", file=sys.stderr)
        return 2
    s = project.summary()
    print(f"{project.manifest_path}: {s['labeled']} labeled, {s['unlabeled']} unlabeled, {s['validation']} validation")
    return 0


if __name__ == "__main__":
    sys.exit(main())
