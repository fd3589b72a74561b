"""`masterplan dev` says where its page is, and serves it whole: no key, readable at once."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from testkit.procs import BIN, Proc, clean_env, free_port, wait_http, wait_job

pytestmark = pytest.mark.slow


def test_dev_prints_the_page_url_and_serves_a_finished_job_page(tmp_path: Path) -> None:
    port = free_port()
    dev = Proc([str(BIN / "masterplan"), "dev", "--port", str(port)], clean_env(),
               tmp_path / "dev.log", cwd=tmp_path)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/healthz", proc=dev)
        assert f"the page is at {base}/" in dev.output()
        index = httpx.get(f"{base}/")
        assert index.status_code == 200 and '<body data-auth="disabled"' in index.text
        r = httpx.post(f"{base}/v1/jobs", json={"idea": "a seed library for balcony gardens"})
        job = wait_job(base, r.json()["id"], {})

        page = httpx.get(f"{base}/jobs/{job['id']}")

        assert page.status_code == 200
        assert f'<div id="job" data-status="{job["status"]}">' in page.text
        assert 'id="masterplan"' in page.text and 'id="verdict"' in page.text
        assert "a seed library for balcony gardens" in httpx.get(f"{base}/").text
    finally:
        dev.stop()
