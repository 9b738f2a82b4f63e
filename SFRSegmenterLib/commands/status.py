"""sfr status: what the project's latest (or a given) run is doing."""

from __future__ import annotations

import json

from .. import jobs
from ..clock import format_duration
from ..errors import SFRError
from ..runfolder import RunFolder
from ..manifest import load_project
from ._options import add_json


def add_parser(sub) -> None:
    p = sub.add_parser(
        "status",
        help="show the state of the project's latest run (running, done, cancelled, failed, crashed)",
        description="Reads PROJECT/runs/<id>/status.json. A run whose process disappeared "
        "(kill -9, crash) is reported as crashed; continue it with 'sfr run PROJECT --resume'.",
    )
    p.add_argument("project", help="project folder")
    p.add_argument("--run", metavar="RUN_ID", help="a run other than the latest")
    add_json(p, "the status")
    p.set_defaults(func=run)


def run(args) -> int:
    project = load_project(args.project)
    try:
        path = jobs.run_dir(project.root, args.run)
    except SFRError:
        if args.json:
            print(json.dumps({"state": "none", "project": str(project.root)}))
            return 0
        raise
    st = jobs.read_status(path)
    st["run"] = str(path)
    stages = RunFolder(path).stage_records()
    st["stages"] = {k: {"status": v.get("status"), "seconds": v.get("seconds"),
                        **({"reused_from": v["reused_from"]} if v.get("reused_from") else {})}
                    for k, v in stages.items()}
    if args.json:
        print(json.dumps(st, indent=None))
        return 0
    state = st.get("state", "unknown")
    line = f"run {st.get('run_id', path.name)}: {state}"
    if st.get("cancel_requested"):
        line += " (cancel requested)"
    if state in ("running", "starting") and st.get("stage"):
        line += f", stage {st.get('stage')}"
        if st.get("stage_index"):
            line += f" ({st.get('stage_index')}/{st.get('stages_total')})"
        if st.get("total"):
            line += f", step {st.get('step')}/{st.get('total')}, eta {format_duration(st.get('eta_s'))}"
    print(line)
    for name, rec in st["stages"].items():
        extra = f" (reused from {rec['reused_from']})" if rec.get("reused_from") else ""
        print(f"  {name:<16} {rec.get('status') or '':<10} {rec.get('seconds') or 0:8.1f} s{extra}")
    for key in ("message", "error"):
        if st.get(key):
            print(f"{key}: {st[key]}")
    if state == "done" and st.get("report"):
        print(f"report: {st['report']}")
    return 0
