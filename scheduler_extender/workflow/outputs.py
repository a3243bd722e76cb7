"""Output parameters: the step's program is wrapped so that, when it ends, its output files reach the API.

Kubernetes itself carries them: the wrapper (POSIX sh, run as the container's
command) starts the step's own command, passes SIGTERM/SIGINT on, waits for it,
then writes each declared file into the container's termination-message file.
Kubelet copies that file into the pod's status
(`containerStatuses[].state.terminated.message`) whatever the exit code, where
the controller reads it. No sidecar, no executor image, no extra permissions.

Wire form (the termination message), parsed strictly by `decode`:

    gedge-outputs 1\\n
    NAME SIZE\\n<SIZE bytes>\\n      one block per output whose file exists

Kubelet keeps at most 4096 bytes of a termination message; a message cut
short is an error naming that limit, never a silently shortened value.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from scheduler_extender.workflow.spec import OutputParameter

HEADER = "gedge-outputs 1"
TERMINATION_LOG = "/dev/termination-log"
MESSAGE_LIMIT = 4096
"""Bytes of a termination message kubelet keeps (per container)."""
WRAPPER_NAME = "gedge-step"


class OutputError(ValueError):
    """A step's outputs that cannot be read: missing file without a default, or a garbled message."""


def wrapper_script(outputs: Sequence[OutputParameter], message_path: str) -> str:
    """The sh program that runs "$@" and then records `outputs` into `message_path`."""
    target = shlex.quote(message_path)
    lines = [
        # The trap is set before the step starts, so a SIGTERM that comes at once is not lost.
        'child=""; term=""',
        'trap \'term=1; [ -n "$child" ] && kill -TERM "$child" 2>/dev/null\' TERM INT',
        '"$@" &',
        "child=$!",
        '[ -n "$term" ] && kill -TERM "$child" 2>/dev/null',
        'wait "$child"; rc=$?',
        'while kill -0 "$child" 2>/dev/null; do wait "$child"; rc=$?; done',
        "{",
        f"  echo '{HEADER}'",
    ]
    for output in outputs:
        path = shlex.quote(output.path)
        lines += [
            f"  if [ -f {path} ]; then",
            f"    printf '%s %s\\n' '{output.name}' \"$(wc -c < {path} | tr -d ' ')\"",
            f"    cat {path}; echo",
            "  fi",
        ]
    lines += [f"}} > {target}", 'exit "$rc"']
    return "\n".join(lines)


def wrap_container(container: Mapping[str, Any], outputs: Sequence[OutputParameter]) -> dict[str, Any]:
    """A copy of the container whose command runs the original one under the wrapper."""
    out = dict(container)
    if not outputs:
        return out
    path = out.get("terminationMessagePath") or TERMINATION_LOG
    original = [*(out.get("command") or []), *(out.get("args") or [])]
    out["command"] = ["/bin/sh", "-c", wrapper_script(outputs, path), WRAPPER_NAME]
    out["args"] = [str(part) for part in original]
    out["terminationMessagePath"] = path
    out["terminationMessagePolicy"] = "File"
    return out


def encode(values: Mapping[str, str]) -> str:
    """A termination message as the wrapper writes it (for plans and tests of the reading side)."""
    parts = [HEADER]
    for name, value in values.items():
        parts.append(f"{name} {len(value.encode())}\n{value}")
    return "\n".join(parts) + "\n"


def decode(message: str | None, outputs: Sequence[OutputParameter]) -> dict[str, str]:
    """The declared outputs' values from a termination message; OutputError names what is missing."""
    if not outputs:
        return {}
    found: dict[str, str] = {}
    if message is None or not message.startswith(HEADER + "\n"):
        shown = "no termination message" if not message else f"termination message {message[:60]!r}"
        raise OutputError(
            f"outputs were not recorded ({shown}); did the step's command run under the wrapper?"
        )
    data = message.encode()
    position = len(HEADER) + 1
    declared = {o.name for o in outputs}
    while position < len(data):
        end = data.find(b"\n", position)
        if end < 0:
            raise _truncated(len(data))
        name, _, size_text = data[position:end].decode(errors="replace").partition(" ")
        if name not in declared or not size_text.isdigit():
            raise OutputError(f"termination message: unexpected line {data[position:end][:80]!r}")
        start = end + 1
        stop = start + int(size_text)
        if stop + 1 > len(data) or data[stop : stop + 1] != b"\n":
            raise _truncated(len(data))
        found[name] = data[start:stop].decode(errors="replace")
        position = stop + 1
    values: dict[str, str] = {}
    for output in outputs:
        if output.name in found:
            values[output.name] = found[output.name].rstrip("\n")
        elif output.default is not None:
            values[output.name] = output.default
        else:
            raise OutputError(
                f"output parameter {output.name}: {output.path} was not written and has no default"
            )
    return values


def _truncated(size: int) -> OutputError:
    return OutputError(
        f"outputs cut short at {size} bytes: kubelet keeps at most {MESSAGE_LIMIT} bytes of a "
        "termination message (pass large results through the workspace volume)"
    )
