"""Fault scenarios on real processes, one table: `python -m bench.chaos` (or `make chaos`).

    python -m bench.chaos                    # every scenario, full size (10-20 jobs, L = 3 s)
    python -m bench.chaos --quick            # 4-6 jobs, L = 1 s: what tests/chaos runs
    python -m bench.chaos --only sigkill,sigterm
    python -m bench.chaos --only sigkill --broker both   # once on Redis, once on RabbitMQ

`--broker redis` (the default) makes the scenario's redis-server the broker too; `--broker
rabbitmq` gives each run a virtual host of its own on the local RabbitMQ (127.0.0.1:5672,
guest; made before the processes start, deleted after), every process gets
`CELERY_BROKER_URL=amqp://.../<vhost>` and Redis keeps only the rate-limit buckets and
cooldowns; `--broker both` runs each scenario once per broker (the `broker` column). On RabbitMQ
only sigkill, sigterm, postgres_restart and provider_chaos run: redis_flush_restart and
broker_down_submit kill Redis to take the broker away, which they would not on RabbitMQ (they are
skipped there, with a note).

Each scenario gets its own redis-server (a free port, no persistence, so it can be killed and
restarted empty), its own PostgreSQL database (a private cluster for the PostgreSQL outage),
fake providers as processes, the API (uvicorn) and two workers (`celery -A workers worker -P
threads -c 20 -Q personas,pipeline`); jobs go in over HTTP. Afterwards SQL and the fakes'
counters give the row:

- fault->done: seconds from the fault to the last job finished (n/a while jobs are open);
- dup outputs: (job, stage) pairs with more than one stored output;
- paid twice: (job, stage) pairs with more than one successful call in the `llm_calls` ledger;
- ledger / provider tokens: input+output tokens of every ledger row, against the tokens the
  fakes charged (their `tokens_admitted`); `undelivered`: answers the fakes charged whose client
  was gone (a killed worker's calls in flight: paid, never recorded);
- redelivered (sigkill): of the messages the killed worker had received and not finished, how
  many the other worker received again (same task id) and how long after the kill; `busy` ones
  were still claimed under the dead worker's lease (a no-op: the sweep hands them back when the
  lease runs out), the others had not started.

Writes <out>/chaos.json and <out>/chaos.md (default bench/results); logs of every process in
<out>/logs/chaos/<scenario>/ (<scenario>-rabbitmq/ on RabbitMQ). Exits 1 when a scenario does not
show its properties.
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import sys
import time
from pathlib import Path
from typing import Any

from bench.chaos_measure import Result
from bench.chaos_run import Mode, run
from bench.chaos_scenarios import SCENARIOS
from bench.chaos_stack import BROKERS

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = ("scenario", "broker", "jobs", "succeeded", "failed", "unfinished", "fault->done s",
           "dup outputs", "paid twice", "ledger tok", "provider tok", "holds", "notes")
NOTE_KEYS = ("in_flight_at_kill", "in_flight_at_signal", "redis_down_s", "max_post_s", "choice",
             "pg_down_s", "during_outage", "worker_a_exit", "unaccounted_tokens", "workers_died",
             "redelivered")
SKIP_NOTE = "kills Redis to take the broker away: not a broker outage when RabbitMQ is the broker"


def plan(names: list[str], brokers: list[str]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(scenario, broker) runs in order, each scenario on every broker in turn; and the pairs
    skipped because the scenario means nothing on that broker."""
    runs: list[tuple[str, str]] = []
    skipped: list[tuple[str, str]] = []
    for name in names:
        for broker in brokers:
            (runs if broker in SCENARIOS[name].brokers else skipped).append((name, broker))
    return runs, skipped


def run_all(runs: list[tuple[str, str]], mode: Mode, out: Path, echo: bool = True) -> list[Result]:
    results = []
    for name, broker in runs:
        if echo:
            print(f"[chaos {time.strftime('%H:%M:%S')}] {name} on {broker} ({mode.name}) ...",
                  flush=True)
        r = run(SCENARIOS[name], mode, out / "logs" / "chaos", broker)
        results.append(r)
        if echo:
            verdict = "holds" if r.holds else "DOES NOT HOLD"
            print(f"[chaos {time.strftime('%H:%M:%S')}] {name} on {broker}: {verdict} in "
                  f"{r.wall_s} s", flush=True)
    return results


def skip_lines(skipped: list[tuple[str, str]]) -> list[str]:
    return [f"- {name} not run on {broker}: {SKIP_NOTE}" for name, broker in skipped]


def _notes(r: Result) -> str:
    parts = [f"{k}={r.extra[k]}" for k in NOTE_KEYS if k in r.extra]
    if "faults_injected" in r.extra:
        parts.append("faults " + ", ".join(f"{name} {f['error']} 5xx/{f['truncated']} cut"
                                           for name, f in r.extra["faults_injected"].items()))
    if r.undelivered:
        parts.append(f"undelivered={r.undelivered} ({r.undelivered_tokens} tok)")
    if r.error:
        parts.append(f"error: {r.error}")
    parts += [f"NOT {c.name} ({c.detail})" for c in r.broken]
    return "; ".join(parts).replace("|", "/")


def row(r: Result) -> list[str]:
    done = "n/a" if r.fault_to_done_s is None else f"{r.fault_to_done_s:.1f}"
    return [r.scenario, r.broker, str(r.jobs), str(r.succeeded), str(r.failed), str(r.unfinished), done,
            str(r.duplicate_outputs), str(r.paid_twice), str(r.ledger_tokens),
            str(r.provider_tokens), "yes" if r.holds else "NO", _notes(r)]


def table(results: list[Result]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row(r)) + " |" for r in results]
    return "\n".join(lines)


def write(results: list[Result], mode: Mode, out: Path,
          skipped: list[tuple[str, str]] | None = None) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    skipped = skipped or []
    meta: dict[str, Any] = {"mode": mode.name, "latency_s": mode.latency_s,
                            "when": time.strftime("%Y-%m-%d %H:%M:%S"),
                            "machine": f"{platform.node()} ({platform.machine()})",
                            "brokers": sorted({r.broker for r in results}, key=BROKERS.index),
                            "skipped": [{"scenario": n, "broker": b, "why": SKIP_NOTE}
                                        for n, b in skipped]}
    js, md = out / "chaos.json", out / "chaos.md"
    js.write_text(json.dumps({**meta, "results": [r.as_dict() for r in results]}, indent=2,
                             default=str) + "\n")
    checks = [f"- **{r.scenario}** on {r.broker} ({r.wall_s} s): " + "; ".join(
        f"{'ok' if c.ok else 'NOT'} {c.name} ({c.detail})" for c in r.checks)
        + (f"; harness error: {r.error}" if r.error else "") for r in results]
    doc = (__doc__ or "").split("\n\n", 2)[2].split("Writes <out>")[0].strip()
    skips = "".join(f"{line}\n" for line in skip_lines(skipped))
    md.write_text(f"# Chaos scenarios ({mode.name}, L = {mode.latency_s:g} s, {meta['when']})\n\n"
                  f"{table(results)}\n\n" + (f"{skips}\n" if skips else "")
                  + "## Properties\n\n" + "\n".join(checks)
                  + "\n\n## Scenarios\n\n" + "\n".join(
                      f"- **{name}**: {SCENARIOS[name].about}"
                      for name in dict.fromkeys(r.scenario for r in results))
                  + f"\n\n## Columns\n\n{doc}\n")
    return js, md


def _exit_on(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer jobs, L = 1 s (the CI size)")
    p.add_argument("--only", default="", help=f"comma-separated: {', '.join(SCENARIOS)}")
    p.add_argument("--broker", choices=(*BROKERS, "both"), default="redis",
                   help="the Celery broker: the scenario's Redis, a RabbitMQ vhost, or each in turn")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    a = p.parse_args(argv)
    names = [n.strip() for n in a.only.split(",") if n.strip()] or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    runs, skipped = plan(names, list(BROKERS) if a.broker == "both" else [a.broker])
    for line in skip_lines(skipped):
        print(f"[chaos] skipped: {line[2:]}", flush=True)
    if not runs:
        p.error(f"nothing to run on {a.broker}")
    mode = Mode(quick=a.quick)
    # `timeout`, CI and terminals stop us with SIGTERM/SIGHUP: unwind, so that every process
    # the scenario started is stopped by the cleanup (SIGKILL is covered by PDEATHSIG).
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on)
    results = run_all(runs, mode, a.out)
    print()
    print(table(results))
    js, md = write(results, mode, a.out, skipped)
    print(f"\nwritten: {js.relative_to(ROOT) if js.is_relative_to(ROOT) else js}, "
          f"{md.relative_to(ROOT) if md.is_relative_to(ROOT) else md}")
    return 0 if all(r.holds for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
