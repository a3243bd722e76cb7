"""Text views of a workflow: the step tree of `gedge-flow get`, its DOT graph, the progress lines of `run`.

A DAG is drawn as a tree: each step hangs under the last of its predecessors
(in dependency order) and names the others as "after ...". Pure functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from scheduler_extender.workflow import dag
from scheduler_extender.workflow.spec import Workflow, topological_order

SYMBOLS = {
    dag.PENDING: "◷",
    dag.RUNNING: "●",
    dag.SUCCEEDED: "✔",
    dag.FAILED: "✖",
    dag.ERRORED: "⚠",
    dag.SKIPPED: "○",
    dag.OMITTED: "-",
}


def duration(start: datetime | None, end: datetime | None, now: datetime) -> str:
    if start is None:
        return ""
    seconds = int(((end or now) - start).total_seconds())
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _parents(workflow: Workflow) -> dict[str, str | None]:
    order = {name: i for i, name in enumerate(topological_order(workflow.spec))}
    return {
        t.name: max(t.predecessors, key=order.__getitem__) if t.predecessors else None
        for t in workflow.spec.tasks
    }


def render_tree(workflow: Workflow, status: dag.WorkflowStatus, now: datetime) -> str:
    parents = _parents(workflow)
    children: dict[str | None, list[str]] = {}
    for name in topological_order(workflow.spec):
        children.setdefault(parents[name], []).append(name)
    rows: list[tuple[str, str, str, str, str, str]] = []
    phase = status.phase
    rows.append(
        (
            f"{SYMBOLS.get(phase, '?')} {workflow.name}",
            phase,
            duration(status.started_at, status.finished_at, now),
            "",
            "",
            status.message,
        )
    )

    def row(name: str, prefix: str, last: bool, extra: str = "") -> None:
        task = status.task(name)
        spec = workflow.spec.task(name)
        after = [p for p in spec.predecessors if p != parents.get(name)]
        serving = f"serving at {task.endpoint}" if spec.serve is not None and task.endpoint else ""
        note = "; ".join(
            p for p in (f"after {', '.join(after)}" if after else "", extra, serving, task.message) if p
        )
        rows.append(
            (
                f"{prefix}{'└─' if last else '├─'}{SYMBOLS.get(task.phase, '?')} {name}",
                task.phase,
                duration(task.started_at, task.finished_at, now),
                str(len(task.attempts)) if task.attempts else "",
                task.pod_name or "",
                note,
            )
        )

    def walk(parent: str | None, prefix: str) -> None:
        kids = children.get(parent, [])
        for i, name in enumerate(kids):
            last = i == len(kids) - 1 and not (parent is None and workflow.spec.on_exit)
            row(name, prefix, last)
            walk(name, prefix + ("   " if last else "│  "))

    walk(None, "")
    if workflow.spec.on_exit is not None:
        row(workflow.spec.on_exit.name, "", True, "exit handler")
    header = ("STEP", "PHASE", "DURATION", "TRIES", "POD", "MESSAGE")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
    lines = []
    for r in [header, *rows]:
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r[:5])) + "  " + r[5])
    return "\n".join(line.rstrip() for line in lines)


def progress_lines(
    previous: Mapping[str, tuple[str, str | None]], status: dag.WorkflowStatus, now: datetime
) -> tuple[list[str], dict[str, tuple[str, str | None]]]:
    """One line per step whose phase or pod changed since `previous` (task -> (phase, pod))."""
    current = {name: (t.phase, t.pod_name) for name, t in sorted(status.tasks.items())}
    stamp = now.strftime("%H:%M:%S")
    lines = []
    for name, (phase, pod) in current.items():
        if previous.get(name) == (phase, pod):
            continue
        task = status.task(name)
        detail = f" pod {pod}" if pod and phase in (dag.RUNNING, dag.PENDING) else ""
        if task.endpoint:
            detail = f" serving at {task.endpoint}" if phase == dag.SUCCEEDED else f" serve {pod}"
        message = f" - {task.message}" if task.message and phase != dag.SUCCEEDED else ""
        lines.append(f"{stamp} {SYMBOLS.get(phase, '?')} {name} {phase}{detail}{message}")
    return lines, current


DOT_COLOURS = {
    dag.PENDING: "#e0e0e0",
    dag.RUNNING: "#9ecbff",
    dag.SUCCEEDED: "#a6e3a1",
    dag.FAILED: "#f5a3a3",
    dag.ERRORED: "#f9c784",
    dag.SKIPPED: "#f4f4f4",
    dag.OMITTED: "#ffffff",
}


def _dot_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_dot(workflow: Workflow, status: dag.WorkflowStatus, now: datetime) -> str:
    """The DAG in Graphviz DOT: one box per task coloured by phase, edges from each predecessor.

    Serve tasks are drawn as a cylinder with their endpoint; the exit handler
    hangs off the graph with a dashed edge from every task nothing else follows.
    """
    lines = [
        f'digraph "{_dot_text(workflow.name)}" {{',
        "  rankdir=LR;",
        f'  label="{_dot_text(f"{workflow.name}: {status.phase}")}"; labelloc=t;',
        '  node [shape=box, style="rounded,filled", fontname="Helvetica"];',
    ]
    for spec in workflow.spec.all_tasks():
        task = status.task(spec.name)
        detail = [task.phase]
        took = duration(task.started_at, task.finished_at, now)
        if took:
            detail.append(took)
        if len(task.attempts) > 1:
            detail.append(f"{len(task.attempts)} tries")
        label = f"{spec.name}\n{' · '.join(detail)}"
        if spec.serve is not None and task.endpoint:
            label += f"\n{task.endpoint}"
        shape = ", shape=cylinder" if spec.serve is not None else ""
        style = ', style="rounded,filled,dashed"' if task.phase in (dag.SKIPPED, dag.OMITTED) else ""
        tooltip = task.message or task.runtime_reason or task.phase
        lines.append(
            f'  "{_dot_text(spec.name)}" [label="{_dot_text(label)}", '
            f'fillcolor="{DOT_COLOURS.get(task.phase, "#ffffff")}"{shape}{style}, '
            f'tooltip="{_dot_text(tooltip)}"];'
        )
    for spec in workflow.spec.tasks:
        for predecessor in spec.predecessors:
            lines.append(f'  "{_dot_text(predecessor)}" -> "{_dot_text(spec.name)}";')
    handler = workflow.spec.on_exit
    if handler is not None:
        followed = {p for t in workflow.spec.tasks for p in t.predecessors}
        for spec in workflow.spec.tasks:
            if spec.name not in followed:
                lines.append(f'  "{_dot_text(spec.name)}" -> "{_dot_text(handler.name)}" [style=dashed];')
    lines.append("}")
    return "\n".join(lines) + "\n"
