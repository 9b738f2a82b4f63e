"""sfr cancel: ask the project's running job to stop at the next safe point."""

from __future__ import annotations

import time

from .. import jobs
from ..errors import SFRError
from ..manifest import load_project


def add_parser(sub) -> None:
    p = sub.add_parser(
        "cancel",
        help="stop the project's running job at the next safe point (everything finished is saved)",
        description="Writes a cancel request into the running run's folder; the job notices it within "
        "one training iteration or one case, saves a checkpoint and exits with status 3. Continue it "
        "later with 'sfr run PROJECT --resume'.",
    )
    p.add_argument("project", help="project folder")
    p.add_argument("--wait", action="store_true", help="wait until the job has stopped")
    p.add_argument("--timeout", type=float, default=600, help="seconds --wait waits at most (default 600)")
    p.add_argument("--kill", action="store_true",
                   help="with --wait: if the job has not stopped within --timeout, end its engine process "
                   "and every process below it (the run then reads as crashed; --resume continues it)")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.kill and not args.wait:
        raise SFRError("--kill needs --wait (it ends the processes once --timeout has passed)")
    project = load_project(args.project)
    path = jobs.run_dir(project.root)
    st = jobs.read_status(path)
    if st.get("state") not in ("starting", "running"):
        raise SFRError(f"run {path.name} is not running (state: {st.get('state')})", path)
    jobs.request_cancel(path)
    print(f"cancel requested for run {path.name}")
    if args.wait:
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            st = jobs.read_status(path)
            if st.get("state") not in ("starting", "running"):
                print(f"run {path.name}: {st.get('state')}")
                return 0
            time.sleep(0.5)
        if args.kill:
            from ..runcontrol import kill_run

            ended = kill_run(path)
            print(f"run {path.name}: did not stop within {args.timeout:g} s; ended process(es) "
                  + (", ".join(map(str, ended)) or "(none left)"))
            return 0
        raise SFRError(f"run {path.name} did not stop within {args.timeout:g} s", path)
    return 0
