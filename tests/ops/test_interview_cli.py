"""`masterplan interview` on the embedded default, driven through its stdin: each question is
printed as it streams, a number picks a quick reply, and the masterplan is built from the
conversation with the transcript in its context."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

from testkit.procs import BIN, clean_env


def test_the_terminal_interview_then_its_masterplan(tmp_path: Path) -> None:
    # "9" is no choice (asked again), then a choice by number, an answer in words, and an
    # empty line, which stops the interview and builds the masterplan.
    r = subprocess.run([str(BIN / "masterplan"), "interview", "bike repair subscriptions"],
                       input="2\n9\n1\nonly commuters in Berlin\n\n", cwd=tmp_path,
                       env=clean_env(COLUMNS="120", STUB_LATENCY_MS="0"), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "Who has this problem most painfully today" in out
    assert "there is no choice 9" in out
    for text in ("Interviewer (turn 1)", "Interviewer (turn 4)", "business model",
                 "Masterplan", "Verdict", "succeeded"):
        assert text in out, f"{text!r} missing from:\n{out}"
    assert "Interviewer (turn 5)" not in out
    db = sqlite3.connect(tmp_path / "masterplan.db")
    answers = [a for (a,) in db.execute("SELECT answer FROM interview_turns ORDER BY n")]
    # Turn 1's choices: 2 is "Individuals"; turn 2's: 1 is "Price".
    assert answers == [None, "Individuals", "Price", "only commuters in Berlin"]
    (context,) = db.execute("SELECT context FROM jobs").fetchone()
    transcript = json.loads(context)["interview"]["transcript"]
    assert [t["answer"] for t in transcript] == answers
    assert db.execute("SELECT status FROM jobs").fetchall() == [("succeeded",)]
    assert db.execute("SELECT count(*) FROM llm_calls WHERE stage = 'interview'").fetchone() == (8,)
