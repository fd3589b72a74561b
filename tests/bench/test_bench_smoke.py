"""The benchmark code runs: `python -m bench --quick` for two measurements with tiny counts.

Proves the harness starts and stops its processes, measures, and writes a well-formed report.
It asserts shapes and sanity, never speed (the machines are shared and noisy).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from testkit.procs import ROOT, clean_env
from tests.conftest import REDIS_URL, _pg_admin_url


def _median(fig: dict) -> float:
    value = fig["median"]
    assert isinstance(value, float | int) and math.isfinite(value), fig
    return float(value)


@pytest.mark.timeout(180)
def test_quick_run_writes_a_report_with_sane_figures(tmp_path: Path, redis_url: str,
                                                      pg_url: str) -> None:
    server = urlsplit(REDIS_URL)
    env = clean_env(BENCH_REDIS_URL=urlunsplit((server.scheme, server.netloc, "/0", "", "")),
                    BENCH_PG_ADMIN_URL=_pg_admin_url())
    r = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only", "throughput,limiter",
                        "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=150)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    report = json.loads((tmp_path / "latest.json").read_text())
    assert report["meta"]["quick"] is True
    assert report["meta"]["sections"] == ["throughput", "limiter"]

    t = report["throughput"]
    for key in ("ours_jobs_per_s", "raw_jobs_per_s", "ratio", "ours_worker_cpu_ms_per_job",
                "raw_worker_cpu_ms_per_job"):
        assert _median(t[key]) > 0, key
    assert _median(t["ratio"]) == pytest.approx(
        _median(t["ours_jobs_per_s"]) / _median(t["raw_jobs_per_s"]), rel=1e-3)
    assert t["ours_failed_jobs"] == 0 and t["ours_unfinished_jobs"] == 0
    assert t["raw_unfinished_jobs"] == 0

    lc = report["ratelimit"]["limiter_cost"]
    for key in ("ping_per_s", "pairs_per_s", "ops_per_s", "pairs_over_ping", "ops_over_ping"):
        assert _median(lc[key]) > 0, key
    # A pair is two round trips: ops = 2 x pairs, in the same run.
    assert _median(lc["ops_per_s"]) == pytest.approx(2 * _median(lc["pairs_per_s"]), rel=1e-4)
    assert _median(lc["ops_over_ping"]) == pytest.approx(2 * _median(lc["pairs_over_ping"]),
                                                         rel=1e-4)

    md = (tmp_path / "latest.md").read_text()
    assert "| figure | ours | baseline | ratio | goal | met |" in md
    assert "1. Throughput" in md and "7c. Limiter cost" in md
