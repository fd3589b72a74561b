"""What ships is the product: the built wheel holds the production packages and nothing else."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from testkit.procs import ROOT

PRODUCT = {"masterplan", "api", "tasks", "workers", "migrations"}


def test_wheel_carries_only_production_code(tmp_path: Path) -> None:
    # Built from a copy, so that the build leaves nothing in the working tree.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "*.db", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(src)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("masterplan-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == PRODUCT
    assert not [n for n in names if "fake" in n or n.startswith(("bench/", "tests/", "testkit/"))]
    # The embedded default's provider and the bucket script are production code and do ship.
    assert "masterplan/llm/stub.py" in names
    assert "masterplan/ratelimit/bucket.lua" in names
    # So do the web page's templates and assets: the page works with no CDN and no source tree.
    assert {"api/web/templates/job.html", "api/web/templates/_job.html", "api/web/static/app.js",
            "api/web/static/app.css"} <= set(names)
