"""Slicer's Reload sees edited logic files: the module's onReload forgets the logic and engine
packages before Slicer re-executes the module file (issue 22, item 3)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_an_edited_logic_file_is_seen_after_forget_packages(tmp_path):
    # a copy of the logic package, imported, edited on disk, forgotten, imported again: in a child
    # process, so this test's own imports keep their module objects
    shutil.copytree(REPO / "SFRSegmenter" / "SFRSegmenterLogicLib", tmp_path / "SFRSegmenterLogicLib")
    script = textwrap.dedent("""
        import sys
        from pathlib import Path
        from SFRSegmenterLogicLib import reloading, progress
        import SFRSegmenterLib.events
        first = progress
        path = Path(progress.__file__)
        path.write_text(path.read_text() + "\\nEDITED = True\\n")
        gone = reloading.forget_packages()
        assert "SFRSegmenterLogicLib.progress" in gone and "SFRSegmenterLib.events" in gone, gone
        assert not any(n.startswith(("SFRSegmenterLogicLib", "SFRSegmenterLib")) for n in sys.modules)
        from SFRSegmenterLogicLib import progress
        assert progress is not first and progress.EDITED is True
        print("ok")
    """)
    env = {"PYTHONPATH": f"{tmp_path}{':'}{REPO}", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]

