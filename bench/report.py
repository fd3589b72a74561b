"""The report: one Markdown table of the headline figures, details per benchmark, and the JSON.

Written to bench/results/latest.md and bench/results/latest.json (not committed); the full
run also copies the Markdown to bench/RESULTS.md (committed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
COMMITTED = Path(__file__).resolve().parent / "RESULTS.md"


def _m(fig: dict[str, Any] | None, fmt: str = "{:.2f}") -> str:
    """median (min-max) of a summarized figure."""
    if not fig or fig.get("median") is None:
        return "-"
    med, lo, hi = (fmt.format(fig[k]) for k in ("median", "min", "max"))
    if len(fig.get("runs", [])) < 2:
        return med
    return f"{med} ({lo}–{hi})"


def _ok(value: float | None, goal: float, higher: bool = True) -> str:
    if value is None:
        return "-"
    return "yes" if (value >= goal if higher else value <= goal) else "**no**"


def _med(fig: dict[str, Any] | None) -> float | None:
    return None if not fig else fig.get("median")


def headline(r: dict[str, Any]) -> list[list[str]]:
    """Rows: figure | ours | baseline | ratio | goal | met."""
    rows: list[list[str]] = []
    if t := r.get("throughput"):
        rows.append([
            f"1. Throughput, prefork -c {t['processes']}, zero-latency stub (jobs/s)",
            _m(t["ours_jobs_per_s"], "{:.1f}"), _m(t["raw_jobs_per_s"], "{:.1f}") + " raw Celery",
            _m(t["ratio"]), "ours/raw ≥ 0.6", _ok(_med(t["ratio"]), 0.6)])
    if lat := r.get("latency"):
        rows.append([
            "2. Latency, one job at a time, HTTP submit → finished in DB: p50 / p95 (ms)",
            f"{_m(lat['ours_p50_ms'], '{:.1f}')} / {_m(lat['ours_p95_ms'], '{:.1f}')}",
            f"{_m(lat['raw_p50_ms'], '{:.1f}')} / {_m(lat['raw_p95_ms'], '{:.1f}')} raw Celery",
            f"p50 {_m(lat['ratio_p50'])}, p95 {_m(lat['ratio_p95'])}", "p50 ≤ 2× raw",
            _ok(_med(lat["ratio_p50"]), 2.0, higher=False)])
    if c := r.get("critical_path"):
        rows.append([
            f"3. Critical path, stub L = {c['latency_ms']} ms, -P {c['pool']}: p50 / p95 (ms)",
            f"{_m(c['p50_ms'], '{:.0f}')} / {_m(c['p95_ms'], '{:.0f}')}",
            f"{c['critical_path_ms']} (3L)", f"p50 {_m(c['ratio_p50'])}, p95 {_m(c['ratio_p95'])}",
            "3L / measured ≥ 0.95", _ok(_med(c["ratio_p50"]), 0.95)])
    if cc := r.get("concurrency"):
        rec = cc.get("recommended")
        if rec:
            b = cc["pools"][rec]
            met = ((_med(b["peak_in_flight"]) or 0) >= 100
                   and (_med(b["rss_mb_peak"]) or 1e9) <= 1024
                   and (_med(b["efficiency"]) or 0) >= 0.9)
            rows.append([
                f"4. Concurrency, stub L = {cc['latency_s']:g} s, recommended pool {rec}: "
                "jobs/s; peak calls in flight; worker RSS (MB)",
                f"{_m(b['jobs_per_s'])}; {_m(b['peak_in_flight'], '{:.0f}')}; "
                f"{_m(b['rss_mb_peak'], '{:.0f}')}",
                "bound peak/L/7 = " + _m(b["bound_jobs_per_s"]),
                _m(b["efficiency"]), "≥ 100 in flight, ≤ 1 GB, jobs/s ≥ 0.9 × bound",
                "yes" if met else "**no**"])
    if s := r.get("scaling"):
        parts, raw = [], []
        for n, v in s["by_processes"].items():
            parts.append(f"{n}: {_m(v['ours_jobs_per_s'], '{:.1f}')}")
            raw.append(f"{n}: {_m(v['raw_jobs_per_s'], '{:.1f}')}")
        rows.append(["5. Scaling, prefork processes → jobs/s", "; ".join(parts),
                     "raw " + "; ".join(raw), "-", "report where it flattens", "-"])
    if m := r.get("memory"):
        keys = [f"rss_mb_at_{n}" for n in m["marks"]]
        late = f"{m['marks'][-2]}→{m['marks'][-1]}" if len(keys) > 2 else "whole run"
        rows.append([
            f"6. Memory, one worker process (-P {m['pool']} -c {m['concurrency']}): RSS (MB) "
            "after " + " → ".join(str(n) for n in m["marks"]) + " jobs",
            " → ".join(_m(m[k], "{:.1f}") for k in keys), "-",
            f"growth {_m(m['growth_mb'], '{:.1f}')} MB in all, {late}: "
            f"{_m(m['late_growth_mb'], '{:.1f}')} MB",
            "no growth beyond a small constant", _ok(_med(m["late_growth_mb"]), 5.0,
                                                     higher=False)])
    if rl := r.get("ratelimit"):
        if b := rl.get("burst"):
            w = b["ways"]
            rows.append([
                "7a. Rate limit, burst 5 × ~1,900 tokens vs "
                f"{b['tpm']:,} TPM: agents ok / 429s / wall (s)",
                f"{_m(w['ours']['agents_ok'], '{:.0f}')} / {_m(w['ours']['http_429'], '{:.0f}')} / "
                f"{_m(w['ours']['wall_s'], '{:.1f}')}",
                f"back-off {_m(w['seed_backoff']['agents_ok'], '{:.0f}')} / "
                f"{_m(w['seed_backoff']['http_429'], '{:.0f}')} / "
                f"{_m(w['seed_backoff']['wall_s'], '{:.1f}')}; gaps "
                f"{_m(w['seed_gaps']['agents_ok'], '{:.0f}')} / "
                f"{_m(w['seed_gaps']['http_429'], '{:.0f}')} / "
                f"{_m(w['seed_gaps']['wall_s'], '{:.1f}')}",
                f"bound {b['bound_s']:.0f} s", "5 ok, 0 × 429, ≈ bound",
                _ok(_med(w["ours"]["agents_ok"]), 5) if _med(w["ours"]["http_429"]) == 0
                else "**no**"])
        if s2 := rl.get("sustained"):
            w = s2["ways"]
            rows.append([
                f"7b. Rate limit, sustained {s2['processes']} processes × {s2['window_s']:.0f} s: "
                "jobs completed / 429s / share of allowance",
                f"{_m(w['ours']['jobs_completed'], '{:.0f}')} / "
                f"{_m(w['ours']['http_429'], '{:.0f}')} / {_m(w['ours']['share_of_allowance'])}",
                f"back-off {_m(w['seed_backoff']['jobs_completed'], '{:.0f}')} / "
                f"{_m(w['seed_backoff']['http_429'], '{:.0f}')} / "
                f"{_m(w['seed_backoff']['share_of_allowance'])}; gaps "
                f"{_m(w['seed_gaps']['jobs_completed'], '{:.0f}')} / "
                f"{_m(w['seed_gaps']['http_429'], '{:.0f}')} / "
                f"{_m(w['seed_gaps']['share_of_allowance'])}",
                "-", "0 × 429, share ≈ 1", "yes" if _med(w["ours"]["http_429"]) == 0 else "**no**"])
        if lc := rl.get("limiter_cost"):
            rows.append([
                "7c. Limiter cost, one client: reserve+reconcile pairs/s; ops/s",
                f"{_m(lc['pairs_per_s'], '{:,.0f}')}; {_m(lc['ops_per_s'], '{:,.0f}')}",
                f"PING {_m(lc['ping_per_s'], '{:,.0f}')}/s",
                f"pairs/PING {_m(lc['pairs_over_ping'])}; ops/PING {_m(lc['ops_over_ping'])}",
                "ops/PING ≥ 0.7", _ok(_med(lc["ops_over_ping"]), 0.7)])
    if st := r.get("streams"):
        h, sub = "healthz", "submit"
        rows.append([
            f"8. Event streams: GET /healthz; POST /v1/jobs p95 (ms) with {st['streams']:,} "
            "streams open on one API process",
            f"{_m(st[f'{h}_loaded_p95_ms'], '{:.1f}')}; {_m(st[f'{sub}_loaded_p95_ms'], '{:.1f}')}",
            f"idle {_m(st[f'{h}_idle_p95_ms'], '{:.1f}')}; {_m(st[f'{sub}_idle_p95_ms'], '{:.1f}')}",
            f"{_m(st[f'{h}_ratio_p95'])}; {_m(st[f'{sub}_ratio_p95'])}", "p95 ≤ 2× idle",
            "yes" if max(_med(st[f"{k}_ratio_p95"]) or 99 for k in (h, sub)) <= 2.0 else "**no**"])
    if fs := r.get("fairness"):
        first, *later = fs["fair_ratio"] or [float("nan")]
        worst = max(later, default=float("nan"))
        rows.append([
            f"9. Fair share: key B's one job (s) while key A's {fs['flood']} jobs wait on a "
            f"{fs['tpm']:,} TPM provider",
            ", ".join(f"{t:.2f}" for t in fs["fair_s"]["runs"]),
            f"idle {_m(fs['idle_s'], '{:.2f}')}; first come first served "
            f"{_m(fs['unfair_s'], '{:.1f}')}",
            f"first newcomer {first:.1f}× idle; after it, worst {worst:.2f}×",
            "≤ 2× idle", "yes" if worst <= 2.0 else "**no**"])
    if si := r.get("silent"):
        before, after = _med(si["added_before_ms"]), _med(si["added_after_ms"])
        met = before is not None and after is not None \
            and before <= si["first_token_s"] * 1000 + 250 and after <= 50
        rows.append([
            "10. Silent provider first in a two-provider chain: added latency per call (ms), "
            f"before / after its circuit opens (first-token timeout {si['first_token_s']:g} s)",
            f"{_m(si['added_before_ms'], '{:.0f}')} / {_m(si['added_after_ms'], '{:.1f}')}",
            f"before: LLM_TIMEOUT_S ({si['timeout_s']:g} s) per call",
            f"{_m(si['calls_paying'], '{:.0f}')} of {si['calls']} calls paid",
            "≤ first-token timeout, then ~0", "yes" if met else "**no**"])
    if ca := r.get("caching"):
        per = {f: ca[f] for f in ("anthropic", "openai") if f in ca}
        met = all((_med(v["ratio"]) or 1.0) < 1.0 for v in per.values())
        rows.append([
            f"11. Prompt caching, one job with a ~{ca['context_tokens']:,}-token context: cost "
            "(USD), cached / uncached, " + ", ".join(per),
            "; ".join(f"{f} {_m(v['cost_cached_usd'], '{:.4f}')}" for f, v in per.items()),
            "; ".join(f"{f} {_m(v['cost_uncached_usd'], '{:.4f}')} uncached"
                      for f, v in per.items()),
            "; ".join(f"{f} {_m(v['ratio'])}" for f, v in per.items()),
            "cached < uncached", "yes" if met else "**no**"])
    return rows


def _table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def _details(r: dict[str, Any]) -> list[str]:
    out: list[str] = []
    if p := r.get("profile"):
        out += ["### Our code per job, without Celery (in-process, `bench/profile.py`)", "",
                _table(["figure", "median (min–max)"],
                       [[k.replace("_", " "), _m(v)] for k, v in p.items()
                        if isinstance(v, dict) and "median" in v]), ""]
    if t := r.get("throughput"):
        out += ["### 1. Throughput", "",
                _table(["figure", "ours", "raw Celery"], [
                    ["jobs/s", _m(t["ours_jobs_per_s"], "{:.1f}"), _m(t["raw_jobs_per_s"], "{:.1f}")],
                    ["worker CPU ms per job", _m(t["ours_worker_cpu_ms_per_job"], "{:.1f}"),
                     _m(t["raw_worker_cpu_ms_per_job"], "{:.1f}")],
                    ["machine CPU ms per job (all processes)",
                     _m(t["ours_system_cpu_ms_per_job"], "{:.1f}"),
                     _m(t["raw_system_cpu_ms_per_job"], "{:.1f}")],
                ]), "",
                f"{t['repeats']} runs of {t['jobs']} jobs each, runs interleaved; failed jobs: "
                f"{t['ours_failed_jobs']}, unfinished: {t['ours_unfinished_jobs']}.", ""]
    if cc := r.get("concurrency"):
        rows = []
        for name, v in cc["pools"].items():
            rows.append([name, _m(v["jobs_per_s"]), _m(v["jobs_done"], "{:.0f}"),
                         _m(v["elapsed_s"], "{:.1f}"),
                         _m(v["calls_per_s"], "{:.1f}"), _m(v["peak_in_flight"], "{:.0f}"),
                         _m(v["mean_in_flight"], "{:.0f}"), _m(v["utilization"]),
                         _m(v["bound_jobs_per_s"]), _m(v["efficiency"]),
                         _m(v["rss_mb_peak"], "{:.0f}")])
        out += [f"### 4. Concurrency: stub L = {cc['latency_s']:g} s, all jobs sent at once", "",
                _table(["pool, jobs", "jobs/s", "jobs done", "s", "calls/s", "peak in flight",
                        "mean in flight", "utilization", "bound peak/L/7", "jobs/s ÷ bound",
                        "peak RSS MB (all processes)"], rows), ""]
    if s := r.get("scaling"):
        rows = [[n, _m(v["ours_jobs_per_s"], "{:.1f}"), _m(v["raw_jobs_per_s"], "{:.1f}"),
                 _m(v["ratio"]), _m(v["ours_system_cpu_ms_per_job"], "{:.0f}"),
                 _m(v["raw_system_cpu_ms_per_job"], "{:.0f}")]
                for n, v in s["by_processes"].items()]
        out += ["### 5. Scaling (prefork processes)", "",
                _table(["processes", "ours jobs/s", "raw jobs/s", "ours/raw",
                        "ours machine CPU ms/job", "raw machine CPU ms/job"], rows), ""]
    if m := r.get("memory"):
        out += ["### 6. Memory", "",
                _table(["jobs", "RSS MB"], [[k[10:], _m(v, "{:.1f}")] for k, v in m.items()
                                             if k.startswith("rss_mb_at_")]), "",
                f"Threads in the worker at the end: {_m(m['threads_at_end'], '{:.0f}')}.", ""]
    if rl := r.get("ratelimit"):
        for key, title, metrics in (
            ("burst", "7a. Burst", ("agents_ok", "http_429", "wall_s", "tokens_admitted",
                                    "share_of_allowance")),
            ("sustained", "7b. Sustained", ("jobs_completed", "calls_ok", "http_429",
                                            "tokens_admitted", "share_of_allowance")),
        ):
            if b := rl.get(key):
                rows = [[way] + [_m(v[mm], "{:.2f}" if "share" in mm else "{:.1f}")
                                 for mm in metrics] for way, v in b["ways"].items()]
                out += [f"### {title}", "", _table(["way", *metrics], rows), ""]
    if st := r.get("streams"):
        rows = [[f"{label} (ms)" if "ratio" not in key else label]
                + [_m(st[f"{kind}_{key}"], "{:.2f}") for kind in ("healthz", "submit")]
                for label, key in (("idle p50", "idle_p50_ms"), ("loaded p50", "loaded_p50_ms"),
                                   ("loaded / idle p50", "ratio_p50"), ("idle p95", "idle_p95_ms"),
                                   ("loaded p95", "loaded_p95_ms"),
                                   ("loaded / idle p95", "ratio_p95"))]
        out += [f"### 8. Event streams ({st['streams']:,} streams on {st['jobs']:,} queued jobs, "
                f"watcher tick {st['poll_s']:g} s)", "",
                _table(["figure", "GET /healthz", "POST /v1/jobs"], rows), "",
                f"{st['repeats']} runs of {st['requests']} requests of each kind per phase. Streams "
                f"open {_m(st['streams_open'], '{:.0f}')}, refused or failed "
                f"{_m(st['streams_failed'], '{:.0f}')}, opened in {_m(st['open_s'], '{:.1f}')} s; "
                f"API CPU with only the streams open {_m(st['api_cpu_pct_quiet_streams'], '{:.1f}')}"
                f"% of a core (none open: {_m(st['api_cpu_pct_quiet_no_streams'], '{:.1f}')}%); "
                f"every stream freed {_m(st['freed_s'], '{:.2f}')} s after its client left.", ""]
    if si := r.get("silent"):
        rows = [[label, _m(si[key], "{:.1f}")] for label, key in (
            ("baseline call, honest provider alone (ms)", "baseline_ms"),
            ("added per call, silent provider reached: median (ms)", "added_before_ms"),
            ("added per call, silent provider reached: max (ms)", "added_before_max_ms"),
            ("added per call, circuit open: median (ms)", "added_after_ms"),
            ("added per call, circuit open: max (ms)", "added_after_max_ms"),
            ("calls that reached the silent provider", "calls_paying"),
            ("requests the silent provider received", "requests_to_silent"))]
        out += [f"### 10. Silent provider ({si['repeats']} runs of {si['calls']} calls; "
                f"LLM_FIRST_TOKEN_TIMEOUT_S {si['first_token_s']:g} s, LLM_STALL_TIMEOUT_S "
                f"{si['stall_s']:g} s, CIRCUIT_FAILURES {si['circuit_failures']}, CIRCUIT_OPEN_S "
                f"{si['circuit_open_s']:g} s)", "", _table(["figure", "median (min–max)"], rows),
                ""]
    return out


def findings(r: dict[str, Any]) -> list[str]:
    """Sentences computed from this run's figures (plus the reasons, which do not change)."""
    out: list[str] = []
    if (p := r.get("profile")) and (t := r.get("throughput")):
        out.append(
            f"Our per-job overhead is the database and Redis work around each call, not Celery: "
            f"the pipeline's code costs {_med(p['cpu_ms_per_job']):.0f} ms of CPU per job "
            f"in-process ({_med(p['sql_statements_per_job']):.0f} SQL statements in "
            f"{_med(p['transactions_per_job']):.0f} transactions, each transaction also paying a "
            f"`pool_pre_ping` round trip, and {_med(p['redis_round_trips_per_job']):.0f} Redis "
            f"round trips), and a job costs the machine "
            f"{_med(t['ours_system_cpu_ms_per_job']):.0f} ms of CPU against raw Celery's "
            f"{_med(t['raw_system_cpu_ms_per_job']):.0f} ms.")
    if c := r.get("critical_path"):
        over = _med(c["p50_ms"]) - c["critical_path_ms"]
        out.append(f"On the critical path a job spends {over:.0f} ms (p50) outside provider calls "
                   f"at L = {c['latency_ms']} ms: {100 * over / c['critical_path_ms']:.1f}% of 3L; "
                   f"at L = 2 s it would be {100 * over / 6000:.1f}%.")
    if cc := r.get("concurrency"):
        pools = cc["pools"]
        rec = cc.get("recommended")
        if rec:
            b = pools[rec]
            out.append(
                f"Recommended pool: {rec.split(',')[0]} ({_med(b['jobs_per_s']):.2f} jobs/s, "
                f"{_med(b['peak_in_flight']):.0f} calls in flight, "
                f"{_med(b['rss_mb_peak']):.0f} MB for the worker). Calls in flight are bounded "
                "by `-c`, not by processes: prefork holds one call per child process.")
        for name, v in pools.items():
            if v["processes"] == 1 and v["pool"] == "threads" and v["concurrency"] > 100:
                out.append(
                    f"{name}: {_med(v['peak_in_flight']):.0f} calls in flight but a mean of "
                    f"{_med(v['mean_in_flight']):.0f}: one process runs every call's Python "
                    "(routing, ledger writes, Celery bookkeeping) under one GIL, so past ~100 "
                    "slots per process add worker processes instead.")
        pairs = [(g, t) for g in pools for t in pools
                 if pools[g]["pool"] == "gevent" and pools[t]["pool"] == "threads"
                 and all(pools[g][k] == pools[t][k] for k in ("concurrency", "processes", "jobs"))]
        if pairs:
            gname, tname = pairs[0]
            g, t2 = pools[gname], pools[tname]
            out.append(
                f"{gname} kept only {_med(g['mean_in_flight']):.0f} calls in flight on average "
                f"against {_med(t2['mean_in_flight']):.0f} for {tname} with the same `-c`: green "
                "pools run Celery's blocking `synloop`, which drains the broker with "
                "`drain_events(timeout=2.0)`; once every slot is busy (prefetch 1 with "
                "acks_late), the freed credit is only noticed when that wait ends, so slots sit "
                "idle for up to 2 s between tasks. The threads pool uses the event loop and "
                "refills at once. psycopg itself cooperates under gevent (it picks its "
                "`wait_poll` when `select` is patched).")
    if s := r.get("scaling"):
        by = s["by_processes"]
        keys = sorted(by, key=int)
        for who in ("ours", "raw"):
            steps = []
            for a, b in zip(keys, keys[1:], strict=False):
                va, vb = _med(by[a][f"{who}_jobs_per_s"]), _med(by[b][f"{who}_jobs_per_s"])
                if va and vb:
                    steps.append(f"{a}→{b} processes {100 * (vb / va - 1):+.0f}%")
            if steps:
                out.append(f"Scaling, {who}: " + ", ".join(steps) + ".")
        busy = []
        for n in keys:
            v = by[n]
            cores = [(_med(v[f"{who}_system_cpu_ms_per_job"]) or 0) / 1000
                     * (_med(v[f"{who}_jobs_per_s"]) or 0) for who in ("ours", "raw")]
            busy.append(f"{n}: {cores[0]:.1f} / {cores[1]:.1f}")
        out.append(
            "Cores busy (machine CPU per job × jobs/s), ours / raw, by processes: "
            + "; ".join(busy) + f" of {r.get('meta', {}).get('cpus', '?')}. Each step adds less "
            "because the worker processes share the cores with PostgreSQL, Redis and the "
            "submitting process: once the machine is near its core count, more processes only "
            "fill the moments a process waits on a round trip, and throughput flattens.")
    if m := r.get("memory"):
        marks = sorted((int(k[10:]), v) for k, v in m.items() if k.startswith("rss_mb_at_"))
        (n0, v0), (n1, v1) = marks[0], marks[-1]
        growth = (_med(v1) or 0) - (_med(v0) or 0)
        text = (f"Memory: one worker process went from {_med(v0):.1f} MB after {n0} jobs to "
                f"{_med(v1):.1f} MB after {n1} (medians; {1024 * growth / (n1 - n0):.1f} KB per "
                "job over that span)")
        if len(marks) > 2:
            (na, va), (nb, vb) = marks[-2], marks[-1]
            late = ((_med(vb) or 0) - (_med(va) or 0)) / (nb - na) * 1024
            text += f"; between {na} and {nb} jobs {late:.1f} KB per job"
        out.append(text + ".")
    if st := r.get("streams"):
        out.append(
            f"Event streams hold no thread and no database connection: with {st['streams']:,} "
            f"open, GET /healthz p95 was {_med(st['healthz_ratio_p95']):.2f}× idle and "
            f"POST /v1/jobs p95 {_med(st['submit_ratio_p95']):.2f}×, and the process spent "
            f"{_med(st['api_cpu_pct_quiet_streams']):.1f}% of a core on them: one watcher asks "
            f"about every watched job in one query each {st['poll_s']:g} s (PostgreSQL compares "
            "each job's state with the signature last sent and returns only the jobs that "
            "changed) and wakes only the streams whose job changed.")
    return out


def markdown(r: dict[str, Any]) -> str:
    meta = r.get("meta", {})
    lines = [
        "# Benchmark results",
        "",
        f"`python -m bench{' --quick' if meta.get('quick') else ''}` on "
        f"{meta.get('cpus', '?')} cores, {meta.get('started', '')}, "
        f"{meta.get('duration_s', 0):.0f} s. Medians of repeated runs, (min–max) across runs. "
        "The machine is shared: absolute figures move with the load; each ratio compares runs "
        "made back to back in the same process."
        + "".join(f" Re-run at {u['at']}: {', '.join(u['sections'])}."
                  for u in meta.get("updated", [])),
        "",
        _table(["figure", "ours", "baseline", "ratio", "goal", "met"], headline(r)),
        "",
        *_details(r),
        "### Findings",
        "",
        *[f"- {f}" for f in findings(r)],
        "",
        "### How each figure is measured",
        "",
        *[f"- {n}" for n in r.get("notes", [])],
        "",
    ]
    return "\n".join(lines)


def write(r: dict[str, Any], *, committed: bool, out_dir: Path = RESULTS_DIR) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    md = markdown(r)
    (out_dir / "latest.json").write_text(json.dumps(r, indent=2, default=str))
    (out_dir / "latest.md").write_text(md)
    if committed:
        COMMITTED.write_text(md)
    return out_dir / "latest.md"
