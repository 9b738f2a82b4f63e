"""Run ids are names, not paths: ``runs/latest``, ``--attach``, ``sfr status RUN`` and ``sfr report``
accept only the engine's run-id pattern and resolve inside ``runs/`` (links resolved).

A shared or downloaded project whose ``runs/latest`` says ``../../fake_run`` or an absolute path
must not steer the engine: every command says so in one line, exits 2 and writes nothing
outside the project (real CLI, real files).
"""

from __future__ import annotations

import json
import os

import pytest

from conftest import run_sfr
from test_run_pipeline import make_project

FAKE_STATUS = {"state": "running", "run_id": "fake", "pid": os.getpid()}


def tree(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_size if p.is_file() else -1)
                  for p in folder.rglob("*"))


@pytest.fixture
def steered(tmp_path, sample_dir):
    """A project whose runs/latest points to a run-looking folder outside it."""
    root = make_project(tmp_path / "proj", sample_dir)
    fake = tmp_path / "fake_run"
    fake.mkdir()
    (fake / "status.json").write_text(json.dumps(FAKE_STATUS))
    (fake / "config.json").write_text(json.dumps({"run_id": "fake", "project": str(root)}))
    (root / "runs").mkdir()
    return root, fake


def outside(tmp_path, root):
    return [entry for entry in tree(tmp_path) if not entry[0].startswith(root.name)]


def one_line_exit_2(proc, *words):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


COMMANDS = [("status",), ("cancel",), ("report",), ("run", "--resume")]


@pytest.mark.parametrize("pointer", ["../../fake_run", "ABSOLUTE"])
def test_latest_pointing_out_of_the_project_is_refused_by_every_command(steered, tmp_path, pointer):
    root, fake = steered
    text = str(fake) if pointer == "ABSOLUTE" else pointer
    (root / "runs" / "latest").write_text(text + "\n")
    before_out, before_runs = outside(tmp_path, root), tree(root / "runs")
    for command in COMMANDS:
        proc = run_sfr(command[0], root, *command[1:])
        one_line_exit_2(proc, "not a run id", "latest")
    assert outside(tmp_path, root) == before_out  # nothing written in fake_run or beside the project
    assert tree(root / "runs") == before_runs
    assert not (fake / "cancel-request").exists()


def test_attach_and_status_run_accept_only_run_ids(steered, tmp_path):
    root, fake = steered
    before = outside(tmp_path, root)
    one_line_exit_2(run_sfr("run", root, "--attach", "../../fake_run"), "not a run id")
    one_line_exit_2(run_sfr("run", root, "--attach", str(fake)), "not a run id")
    one_line_exit_2(run_sfr("status", root, "--run", "../../fake_run"), "not a run id")
    assert outside(tmp_path, root) == before


def test_a_run_id_that_is_a_link_out_of_runs_is_refused(steered, tmp_path):
    root, fake = steered
    rid = "20260101-000000-abcd"
    (root / "runs" / rid).symlink_to(fake, target_is_directory=True)
    (root / "runs" / "latest").write_text(rid + "\n")
    before = outside(tmp_path, root)
    for command in COMMANDS:
        proc = run_sfr(command[0], root, *command[1:])
        one_line_exit_2(proc, "out of the project")
    assert outside(tmp_path, root) == before
    assert not (fake / "cancel-request").exists()


def test_a_valid_latest_still_resolves(steered):
    root, _ = steered
    from SFRSegmenterLib import jobs

    rid = "20260101-000000-abcd"
    (root / "runs" / rid).mkdir()
    jobs.set_latest(root, rid)
    assert jobs.run_dir(root) == root / "runs" / rid
    with pytest.raises(Exception, match="not a run id"):
        jobs.set_latest(root, "../x")
