"""Terminal rendering for the demo: live stage progress, the plan, the verdict, the costs."""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table

from masterplan.settings import KNOWN_PROVIDERS, Settings
from masterplan.stages import pipeline

_ICON = {"pending": "[dim]○ waiting[/dim]", "running": "[yellow]◐ running[/yellow]",
         "succeeded": "[green]● done[/green]", "failed": "[red]✗ failed[/red]",
         "cancelled": "[dim]– cancelled[/dim]"}


def progress_table(job: Any, runs: list[Any], elapsed_s: float) -> Table:
    t = Table(title=f"job {job.id[:8]} — {job.status} — {elapsed_s:.1f} s", expand=False)
    t.add_column("stage")
    t.add_column("status")
    t.add_column("provider")
    p = pipeline()
    for r in runs:
        title = p[r.stage].title if r.stage in p.order else r.stage
        t.add_row(title, _ICON.get(r.status, r.status), r.provider or "")
    return t


def _bullets(items: list[Any]) -> str:
    return "\n".join(f"• {i}" for i in items)


def render_job(console: Console, job: Any, runs: list[Any], usage: list[dict[str, Any]],
               settings: Settings) -> None:
    if job.status == "failed":
        console.print(Panel(job.error or "unknown", title="[red]job failed[/red]"))
    outputs = {r.stage: r.output for r in runs if r.output}
    plan = outputs.get("synthesis")
    if plan:
        roadmap = "\n".join(f"{i + 1}. {p['name']} ({p['duration_weeks']} wk): {', '.join(p['goals'])}"
                            for i, p in enumerate(plan["roadmap"]))
        comps = "\n".join(f"• {c['name']}: {c['responsibility']}" for c in plan["components"])
        console.print(Panel(Group(
            plan["executive_summary"], "", "[b]Components[/b]", comps, "",
            f"[b]Data flow[/b]\n{plan['data_flow']}", "", f"[b]Stack[/b] {', '.join(plan['stack'])}",
            "", "[b]Roadmap[/b]", roadmap, "", "[b]Success metrics[/b]",
            _bullets(plan["success_metrics"]),
        ), title=f"Masterplan — {job.idea[:60]}"))
    crit = outputs.get("critique")
    if crit:
        console.print(Panel(Group(
            f"[b]Verdict:[/b] {crit['verdict']} — score {crit['score']}/10", crit["reasoning"], "",
            "[b]Strongest objections[/b]", _bullets(crit["strongest_objections"]), "",
            "[b]Kill criteria[/b]", _bullets(crit["kill_criteria"]),
        ), title="Devil's advocate"))
    t = Table(title="Usage by stage")
    for col in ("stage", "provider", "calls", "tokens in", "tokens out", "cost $", "waited ms"):
        t.add_column(col, justify="left" if col in ("stage", "provider") else "right")
    tin = tout = 0
    cost = 0.0
    for u in usage:
        t.add_row(u["stage"], u["provider"], str(u["calls"]), f"{u['input_tokens']:,}",
                  f"{u['output_tokens']:,}", f"{u['cost_usd']:.6f}", f"{u['wait_ms']:,}")
        tin, tout, cost = tin + u["input_tokens"], tout + u["output_tokens"], cost + u["cost_usd"]
    t.add_row("[b]total[/b]", "", "", f"{tin:,}", f"{tout:,}", f"{cost:.6f}", "")
    console.print(t)
    if all(u["provider"] == "stub" for u in usage):
        at = ", ".join(
            f"{n} ${(tin * d.price_in + tout * d.price_out) / 1e6:.4f}"
            for n, d in KNOWN_PROVIDERS.items() if n != "stub"
        )
        console.print(f"[dim]The stub costs nothing; the same tokens would cost: {at}.[/dim]")
    console.print(f"job {job.id}: [b]{job.status}[/b]")


def render_turn(console: Console, turn: dict[str, Any] | None) -> list[str]:
    """An interview turn's structured part: the scores (and how they moved), the assumptions
    this turn changed, the quick replies numbered. Returns the replies."""
    if turn is None:
        console.print("[dim]answer again to go on[/dim]")
        return []
    s = turn.get("structured")
    if s is None:
        console.print(f"[yellow]no scores this turn: {turn.get('error')}[/yellow]")
        return []
    t = Table(show_header=False, box=None, padding=(0, 1))
    for name, score in s["eval"].items():
        moved = score["moved"]
        arrow = f"[green]+{moved}[/green]" if moved > 0 else f"[red]{moved}[/red]" if moved < 0 \
            else "[dim]=[/dim]"
        t.add_row(name.replace("_", " "), f"{score['score']}/10", arrow, f"[dim]{score['reason']}[/dim]")
    console.print(t)
    for a in s["assumptions"]:
        if a.get("changed"):
            console.print(f"  [magenta]{a['status']}[/magenta]: {a['statement']}")
    for i, choice in enumerate(s["choices"], 1):
        console.print(f"  [bold]{i}[/bold]. {choice}")
    return list(s["choices"])
