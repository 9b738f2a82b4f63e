"""Stage keys carry the version of the code computing the stage (``run/versions.py``).

Real runs with the tiny test SAM: a project run once, then run again by the same code (every
stage reused from the first run) and by a copy of the code where one stage's version was
bumped, as an upgrade would (that stage and the stages after it computed again, the ones before
reused).
"""

from __future__ import annotations

import json
import re
import shutil

from conftest import REPO, run_sfr
from test_run_pipeline import CASES, TINY, latest, make_project, stages


def bumped_code(dest, stage: str):
    """A copy of the engine whose ``stage`` version is one more (the upgrade under test)."""
    shutil.copytree(REPO / "SFRSegmenterLib", dest / "SFRSegmenterLib",
                    ignore=shutil.ignore_patterns("__pycache__", "sample_data"))
    versions = dest / "SFRSegmenterLib" / "run" / "versions.py"
    text = versions.read_text()
    now = int(re.search(rf'"{stage}": (\d+),', text).group(1))
    versions.write_text(text.replace(f'"{stage}": {now},', f'"{stage}": {now + 1},'))
    return dest


def test_a_bumped_stage_version_is_not_reused_an_unchanged_one_is(tmp_path, sample_dir):
    root = make_project(tmp_path / "proj", sample_dir, cases=CASES[:4], validation=0)
    run_sfr("run", root, *TINY, "--no-report", check=True)
    first = latest(root)

    run_sfr("run", root, *TINY, "--no-report", check=True)  # same code, same inputs
    same = stages(latest(root))
    assert latest(root) != first
    for name in ("stitch", "finetune-r0", "pseudolabel-r0", "retrain-r0", "confidence-r0"):
        assert same[name]["reused_from"].startswith(f"runs/{first.name}/"), name

    code = bumped_code(tmp_path / "code", "finetune")
    # (cwd: ``python -m`` puts the current folder first on sys.path)
    run_sfr("run", root, *TINY, "--no-report", check=True, cwd=tmp_path, env={"PYTHONPATH": str(code)})
    upgraded = stages(latest(root))
    assert upgraded["stitch"].get("reused_from")  # stitch's code did not change
    for name in ("finetune-r0", "pseudolabel-r0", "retrain-r0", "confidence-r0"):
        assert not upgraded[name].get("reused_from"), name  # a new SAM model and all after it
        assert upgraded[name]["key"] != same[name]["key"]
    assert upgraded["stitch"]["key"] == same["stitch"]["key"]
    assert json.loads((latest(root) / "config.json").read_text())["backbone"] == "tiny_test"


def test_every_key_kind_has_a_version():
    from SFRSegmenterLib.run import cache, versions

    kinds = re.findall(r'make_key\("([a-z-]+)"', (REPO / "SFRSegmenterLib" / "run" / "pipeline.py").read_text())
    assert kinds and all(versions.stage_version(k) >= 1 for k in kinds)
    assert cache.make_key("finetune", 1) != cache.make_key("stitch", 1)
    try:
        cache.make_key("no-such-stage", 1)
    except KeyError as e:
        assert "STAGE_VERSIONS" in str(e)
    else:
        raise AssertionError("a kind without a version made a key")
