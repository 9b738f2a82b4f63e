"""The bundled hippocampus sample as a Sample Data entry, and the quick self-test that uses it.

:func:`sample_source` gives the keyword arguments of Slicer's
``SampleData.SampleDataLogic.registerCustomSampleDataSource``: the engine's bundled files as
``file://`` URIs (Sample Data copies them into its cache with ``urllib``, as it downloads any
URI), with their SHA-256, two segmentations (the labeled cases) and three volumes.  A
segmentation is named ``"<case> segmentation"``, so the module pairs it with its volume.

:func:`quick_check` is the self-test a Slicer build runs (``runTest``): it needs neither a GPU
nor the engine's extra packages.  It loads the sample the way Sample Data does, finds the cases,
exports the project and checks it is ready to run; the full workflow (a real ``sfr run``) is the
module test's on-demand part.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from SFRSegmenterLib.errors import SFRError

CATEGORY = "SFR Segmenter"
SAMPLE_NAME = "SFRHippocampus"
#: The sample's cases: the first ones labeled, the rest unlabeled (as in the module test).
LABELED = ("hippocampus_001", "hippocampus_003")
UNLABELED = ("hippocampus_004", "hippocampus_006", "hippocampus_007")


def sample_folder() -> Path:
    """The engine's bundled hippocampus sample (``SFRSegmenterLib/sample_data/hippocampus``)."""
    import SFRSegmenterLib

    return Path(SFRSegmenterLib.__file__).resolve().parent / "sample_data" / "hippocampus"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sample_files(folder: "str | os.PathLike | None" = None) -> list:
    """``(path, node name, load file type)`` for each file of the sample, labels first."""
    folder = Path(folder) if folder else sample_folder()
    files = [(folder / "labels" / f"{case}.nii.gz", f"{case} segmentation", "SegmentationFile") for case in LABELED]
    files += [(folder / "images" / f"{case}.nii.gz", case, "VolumeFile") for case in (*LABELED, *UNLABELED)]
    missing = [str(path) for path, _, _ in files if not path.is_file()]
    if missing:
        raise SFRError("the bundled sample is incomplete: " + ", ".join(missing))
    return files


def sample_source(folder: "str | os.PathLike | None" = None, thumbnail: str | None = None) -> dict:
    """Keyword arguments of ``SampleDataLogic.registerCustomSampleDataSource`` for the sample."""
    files = sample_files(folder)
    return {
        "category": CATEGORY,
        "sampleName": SAMPLE_NAME,
        "uris": [path.as_uri() for path, _, _ in files],
        # the cache is shared by every extension: prefixed names, unique per file
        "fileNames": [f"SFR-{path.parent.name}-{path.name}" for path, _, _ in files],
        "nodeNames": [name for _, name, _ in files],
        # "loadFileType" takes a list in every Slicer >= 5.0; newer ones also call it "loadFileTypes"
        "loadFileType": [kind for _, _, kind in files],
        "checksums": [f"SHA256:{_sha256(path)}" for path, _, _ in files],
        "thumbnailFileName": thumbnail,
    }


def load_like_sample_data(scene, paths: list, source: dict) -> dict:
    """Load files (Sample Data's copies of ``source``'s URIs) as Slicer's readers do: volumes
    through a storage node, segmentations through the Segmentations logic; ``{node name: node}``."""
    from .nodes import read_node, segmentation_logic

    loaded = {}
    for path, name, kind in zip(paths, source["nodeNames"], source["loadFileType"]):
        if kind == "SegmentationFile":
            node = segmentation_logic(scene).LoadSegmentationFromFile(str(path), True, name)
            if node is None:
                raise SFRError("Slicer could not read this segmentation", path)
        else:
            node = read_node(scene, path, "vtkMRMLScalarVolumeNode", name)
        loaded[name] = node
    return loaded


def quick_check(scene, project_dir: "str | os.PathLike", paths: list | None = None) -> dict:
    """The self-test without GPU or extra packages: sample -> cases -> project ready to run.

    ``paths`` are the files Sample Data fetched (default: the bundled files themselves).
    Returns what it checked; raises ``AssertionError`` (or ``SFRError``) on a failure.
    """
    from .cases import scene_cases
    from .export import check_ready_to_run, export_project

    source = sample_source()
    paths = paths or [path for path, _, _ in sample_files()]
    loaded = load_like_sample_data(scene, paths, source)
    cases = {entry.name: entry for entry in scene_cases(scene)}
    assert set(cases) == {*LABELED, *UNLABELED}, sorted(cases)
    for case in LABELED:
        assert cases[case].segmentation is loaded[f"{case} segmentation"], f"{case} is not paired with its segmentation"
    for case in UNLABELED:
        assert cases[case].segmentation is None, f"{case} should be unlabeled"
    project = export_project(scene, project_dir, list(cases.values()))
    check_ready_to_run(project)
    labeled = [c.name for c in project.by_role("labeled")]
    assert labeled == list(LABELED), labeled
    return {"cases": sorted(cases), "labeled": labeled, "classes": list(project.classes)}


#: Settings of the self-test's fast run; the tiny backbone is the engine's test model.
WORKFLOW_SETTINGS = dict(backbone="tiny_test", ssl="mean_teacher", sfr_plus=True, device="cpu",
                         iterations_sam=5, iterations_vnet=5)


def workflow_check(scene, project_dir: "str | os.PathLike", jobs=None, process_events=None,
                   timeout_s: float = 1800.0, say=print) -> dict:
    """The whole clinician loop on the bundled sample, as the panel drives it: load, export, a real
    detached ``sfr run`` (tiny test backbone, CPU) followed to its end, results loaded, the flagged
    slices stepped through, the overlay shown and hidden, one pseudo-label accepted.

    ``jobs`` is the panel's ``session.PanelJobs`` (a new one on ``scene`` by default);
    ``process_events`` is called while the run goes on (Slicer: ``slicer.app.processEvents``).
    Raises ``AssertionError`` (or ``SFRError``) on a failure; returns what it checked.
    """
    import time

    from SFRSegmenterLib.runcontrol import RunSettings

    from . import provenance, review
    from .cases import scene_cases
    from .export import check_ready_to_run, export_project
    from .session import PanelJobs

    jobs = jobs or PanelJobs(scene)
    say("Loading the sample: 2 labeled and 3 unlabeled hippocampus volumes")
    load_like_sample_data(scene, [entry[0] for entry in sample_files()], sample_source())
    project = export_project(scene, project_dir, scene_cases(scene))
    check_ready_to_run(project)
    assert len(project.by_role("labeled")) == len(LABELED)

    say("Running SFR in the background")
    finished = []
    job = jobs.start_run(project_dir, RunSettings(**WORKFLOW_SETTINGS), on_finished=finished.append)
    deadline = time.monotonic() + timeout_s
    while not finished and time.monotonic() < deadline:
        if process_events:
            process_events()  # the UI stays responsive while the engine works
        jobs.poll()
        time.sleep(0.05)
    if not finished:
        jobs.stop_run()
        raise AssertionError("sfr run did not finish in time")
    assert job.state == "done", "\n".join(job.progress.log[-30:])

    say("Loading the results and stepping through the flagged slices")
    results = jobs.load_results(project_dir, job.run_id)
    assert {r.case for r in results} == set(UNLABELED), sorted(r.case for r in results)
    rows = review.flagged_slices({r.case: r.review for r in results})
    if rows:
        review.show_flagged(scene, jobs.results, rows[review.step(rows, -1, +1)])
    first = results[0]
    if first.confidence is not None:
        review.show_low_confidence(scene, first.reference, first.confidence)
        review.hide_low_confidence(scene)

    say("Accepting one pseudo-label")
    jobs.accept(project_dir, first.case)
    assert provenance.case_states(project_dir)[first.case] == "accepted"
    return {"run": job.run_id, "results": sorted(r.case for r in results), "flagged": len(rows),
            "accepted": first.case}
