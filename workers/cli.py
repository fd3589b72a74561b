"""`masterplan demo "idea"`, `masterplan interview "idea"` and `masterplan dev`: the whole
system in one process.

Both run a real Celery worker inside the process. With no REDIS_URL that is the embedded
default (memory broker, fakeredis, SQLite, the stub provider when no key is set); with REDIS_URL
and DATABASE_URL set they use those services. Their own defaults (the demo's stub latency, dev's
AUTH_DISABLED) go to `load_settings`, below the environment and `.env`: `os.environ` is never
changed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from masterplan.settings import Settings

DEFAULT_IDEA = "a marketplace for used lab equipment"


# The demo's stub answers after this long (unless STUB_LATENCY_MS is set), so progress is visible.
DEMO_STUB_LATENCY_MS = "400"
# Each command's defaults, used where neither the environment nor `.env` sets the variable.
DEFAULTS: dict[str, dict[str, str]] = {
    "demo": {"STUB_LATENCY_MS": DEMO_STUB_LATENCY_MS},
    "interview": {"STUB_LATENCY_MS": DEMO_STUB_LATENCY_MS},
    "dev": {"AUTH_DISABLED": "true"},
}


def command_settings(command: str, *, quiet_logs: bool = True) -> Settings:
    """The settings `masterplan <command>` runs with. Raises ConfigError naming the variable."""
    from masterplan.settings import load_settings

    overrides: dict[str, Any] = {"log_level": "WARNING"} if quiet_logs else {}
    return load_settings(defaults=DEFAULTS.get(command, {}), **overrides)


def _prepare(args: argparse.Namespace) -> tuple[Any, Any]:
    from masterplan.errors import ConfigError
    from masterplan.logs import setup_logging
    from masterplan.runtime import build_runtime

    try:
        settings = command_settings(args.command, quiet_logs=getattr(args, "quiet_logs", True))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    setup_logging(settings)
    from workers import runtime
    from workers.celery_app import app, configure_app

    configure_app(app, settings)
    rt = build_runtime(settings, migrate=True)
    runtime.set_runtime(rt)
    return app, rt


def _run_job(console: Any, rt: Any, idea: str, context: dict[str, Any] | None) -> int:
    """Store and run one job on the worker already running, showing its progress live, then
    print it; 0 when it succeeded."""
    from rich.live import Live

    from masterplan.db import queries as q
    from masterplan.db.models import OPEN
    from tasks.pipeline import enqueue
    from workers.render import progress_table, render_job

    with rt.sessions.begin() as s:
        job = q.create_job(s, owner="demo", idea=idea, context=context,
                           deadline_s=rt.settings.job_deadline_s)
    started = time.perf_counter()
    enqueue(job.id)
    with Live(console=console, refresh_per_second=12, transient=False) as live:
        while True:
            with rt.sessions() as s:
                j = q.get_job(s, job_id=job.id)
                assert j is not None
                runs = q.stage_runs(s, job_id=job.id)
                live.update(progress_table(j, runs, time.perf_counter() - started))
                if j.status not in OPEN:
                    break
            time.sleep(0.05)
    console.print()
    with rt.sessions() as s:
        j = q.get_job(s, job_id=job.id)
        assert j is not None
        render_job(console, j, q.stage_runs(s, job_id=job.id),
                   q.usage_by_stage(s, job_id=job.id), rt.settings)
    return 0 if j.status == "succeeded" else 1


def _where(console: Any, rt: Any) -> None:
    from masterplan.settings import chain_summary

    console.print(f"[dim]{'embedded default' if rt.settings.embedded else 'services'}: "
                  f"{chain_summary(rt.settings)}; database {rt.engine.url.render_as_string()}[/dim]")


def demo(args: argparse.Namespace) -> int:
    from rich.console import Console

    from workers.embedded import embedded_worker

    console = Console()
    app, rt = _prepare(args)
    _where(console, rt)
    with embedded_worker(app):
        code = _run_job(console, rt, args.idea, None)
    rt.close()
    return code


def interview(args: argparse.Namespace) -> int:
    """The interview in the terminal: each question streamed as it is written, the scores and
    the quick replies after it (type a number or your own answer; an empty line or /done
    stops), then the masterplan built from the conversation."""
    from rich.console import Console

    from masterplan import conversation as cv
    from tasks.interview import enqueue_turn
    from workers.embedded import embedded_worker
    from workers.render import render_turn

    console = Console(highlight=False)
    app, rt = _prepare(args)
    _where(console, rt)
    with embedded_worker(app):
        iid, n = cv.start(rt, owner="demo", idea=args.idea)
        while True:
            enqueue_turn(iid, n)
            turn = _stream_turn(console, rt, iid, n)
            choices = render_turn(console, turn)
            if turn is not None and turn.get("finished"):
                console.print("[bold]The interviewer has enough.[/bold]")
                break
            answer = _answer(console, choices)
            if answer is None:
                break
            n = cv.answer(rt, owner="demo", interview_id=iid, text=answer)
        console.print("\n[bold]Building the masterplan from the interview…[/bold]")
        interview_row, context = cv.job_input(rt, owner="demo", interview_id=iid)
        code = _run_job(console, rt, interview_row.idea, context)
    rt.close()
    return code


def _stream_turn(console: Any, rt: Any, interview_id: str, n: int) -> dict[str, Any] | None:
    """Print the turn's text as it arrives; its `turn` payload, or None when it failed."""
    from masterplan import turnstream as ts

    key = ts.key(rt.settings.redis_key_prefix, interview_id, n)
    console.print(f"\n[bold cyan]Interviewer[/bold cyan] [dim](turn {n})[/dim]")
    result: dict[str, Any] | None = None
    for event in ts.follow(rt.redis, key, give_up_s=rt.settings.interview_turn_timeout_s):
        data = event.payload()
        if event.name == ts.TOKEN:
            console.print(data["text"], end="", soft_wrap=True)
        elif event.name == ts.WAIT:
            console.print(f"[dim](waiting {data['wait_ms'] / 1000:.1f} s for a provider)[/dim]",
                          end=" ")
        elif event.name == ts.ERROR:
            console.print(f"\n[red]this turn failed: {data['error']}[/red]")
        elif event.name == ts.TURN:
            result = data
    console.print()
    return result


def _answer(console: Any, choices: list[str]) -> str | None:
    """The founder's answer: a choice by its number, or their own words; None to stop."""
    while True:
        try:
            line = console.input("[bold green]you>[/bold green] ").strip()
        except EOFError:
            return None
        if not line or line == "/done":
            return None
        if line.isdigit():
            i = int(line)
            if 1 <= i <= len(choices):
                return choices[i - 1]
            console.print(f"[yellow]there is no choice {i}; type 1 to {len(choices)} or your own "
                          "answer[/yellow]")
            continue
        return line


def dev(args: argparse.Namespace) -> int:
    import uvicorn

    from api.factory import create_app
    from workers.embedded import embedded_worker

    app, rt = _prepare(args)
    if rt.settings.auth_disabled:
        print("masterplan dev: authentication disabled (AUTH_DISABLED=true) — for local use only",
              file=sys.stderr)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"masterplan dev: the page is at http://{host}:{args.port}/ (API docs at /docs)",
          file=sys.stderr)
    with embedded_worker(app):
        uvicorn.run(create_app(runtime=rt), host=args.host, port=args.port, log_level="info")
    rt.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="masterplan", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="run one masterplan job and print it")
    p.add_argument("idea", nargs="?", default=DEFAULT_IDEA)
    p.set_defaults(fn=demo)
    p = sub.add_parser("interview", help="an interview that sharpens the idea, then its masterplan")
    p.add_argument("idea", nargs="?", default=DEFAULT_IDEA)
    p.set_defaults(fn=interview)
    p = sub.add_parser("dev", help="the HTTP API with an in-process worker")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(fn=dev, quiet_logs=False)
    args = parser.parse_args(argv)
    if args.command in ("demo", "interview") and not args.idea.strip():
        parser.error("the idea must not be empty")
    logging.captureWarnings(True)
    return int(args.fn(args))


if __name__ == "__main__":
    raise SystemExit(main())
