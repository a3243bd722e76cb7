"""Every command line and subcommand answers --help with an examples section, through its installed script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
COMMANDS = [
    ("gedge-agent",),
    ("gedge-agent", "topology"),
    ("gedge-agent", "serve"),
    ("gedge-agent", "bench"),
    ("gedge-extender",),
    ("gedge-extender", "serve"),
    ("gedge-extender", "place"),
    ("gedge-extender", "demo"),
    ("gedge-flow",),
    ("gedge-flow", "run"),
    ("gedge-flow", "get"),
    ("gedge-flow", "logs"),
    ("gedge-flow", "delete"),
    ("gedge-flow", "controller"),
]
PENDING: dict[tuple[str, ...], str] = {}
"""Subcommands whose parser has no examples epilog yet; strict, so adding one makes this list shrink."""


def _params() -> list[object]:
    params: list[object] = []
    for command in COMMANDS:
        marks = []
        if command in PENDING:
            marks.append(pytest.mark.xfail(strict=True, reason=f"no examples epilog in {PENDING[command]}"))
        params.append(pytest.param(command, id=" ".join(command), marks=marks))
    return params


@pytest.mark.parametrize("command", _params())
def test_help_shows_examples(command: tuple[str, ...]) -> None:
    script, *sub = command
    result = subprocess.run(
        [str(BIN / script), *sub, "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines and lines[0].startswith(f"usage: {' '.join(command)}"), result.stdout[:200]
    assert "examples:" in lines, f"{' '.join(command)} --help has no examples section"
    examples = lines[lines.index("examples:") + 1 :]
    assert any(line.strip().startswith(" ".join(command)) for line in examples), (
        f"{' '.join(command)} --help examples do not show the command itself"
    )


def test_configuration_doc_names_every_setting() -> None:
    """docs/configuration.md covers every agent key and every extender and gedge-flow flag."""
    import argparse
    import dataclasses

    from agent.config import AgentConfig
    from scheduler_extender.commands import serve as extender_serve
    from scheduler_extender.workflow.commands import controller

    doc = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    for field in dataclasses.fields(AgentConfig):
        assert f"`{field.name}`" in doc, f"agent key {field.name} is not documented"
    for module in (extender_serve, controller):
        parser = argparse.ArgumentParser()
        module.register(parser)
        for action in parser._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and flag != "--help":
                    assert f"`{flag}" in doc, f"{module.__name__}: {flag} is not documented"


def test_configuration_doc_gives_the_extender_defaults_and_paths() -> None:
    """docs/configuration.md's `gedge-extender serve` table: each flag's default as the parser has it,
    and every path each listener serves."""
    import argparse

    from prometheus_client import CollectorRegistry

    from scheduler_extender.commands import serve as extender_serve
    from scheduler_extender.http.app import build_app, build_metrics_app
    from scheduler_extender.node_source import StaticNodeSource
    from scheduler_extender.verbs import Extender
    from tests.extender.conftest import RecordingBinder

    doc = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    section = doc[doc.index("## gedge-extender serve") : doc.index("## gedge-flow controller")]
    rows: dict[str, list[str]] = {}
    for line in section.splitlines():
        if line.startswith("| `--"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            rows[cells[0].strip("`").split()[0]] = cells
    parser = argparse.ArgumentParser()
    extender_serve.register(parser)
    for action in parser._actions:
        flag = next((f for f in action.option_strings if f.startswith("--")), None)
        if flag is None or flag == "--help" or action.default is None or rows[flag][1] == "(mode)":
            continue
        written = rows[flag][1].split()[0].strip("`")
        if action.default is False:
            assert written == "off", f"{flag}: the doc says {written}"
        else:
            value = f"{action.default:g}" if isinstance(action.default, float) else str(action.default)
            assert written == value, f"{flag}: the doc says {written}, the default is {value}"
    verbs = build_app(Extender(StaticNodeSource(), RecordingBinder()))
    for flag, app in (("--listen", verbs), ("--metrics-listen", build_metrics_app(CollectorRegistry()))):
        for resource in app.router.resources():
            assert f"`{resource.canonical}`" in rows[flag][2], (
                f"{flag} serves {resource.canonical}; not in the doc"
            )


@pytest.mark.parametrize("module", ["agent.cli", "scheduler_extender.cli", "scheduler_extender.workflow.cli"])
def test_examples_continued_on_the_next_line_keep_their_line_break(
    module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An example written over two lines is shown over two, the first ending with a backslash (a lone
    backslash at the end of a line in the epilog's source joins the lines into one)."""
    import importlib
    import itertools
    import re

    with pytest.raises(SystemExit):
        importlib.import_module(module).main(["--help"])
    text = capsys.readouterr().out
    examples = text.split("\nexamples:\n", 1)[1].splitlines()
    for line in examples:
        assert not re.search(r"\S {4,}--", line), f"two example lines run together: {line!r}"
    for first, second in itertools.pairwise(examples):
        if first.endswith("\\"):
            assert second.startswith("      "), f"a continued example is not indented: {second!r}"


@pytest.mark.parametrize("module", ["agent.cli", "scheduler_extender.cli"])
def test_serving_examples_say_how_they_get_past_the_tls_check(
    module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """serve (and place --agents) refuse to start without TLS files or --insecure, so an example that
    gives neither fails as written."""
    import importlib

    with pytest.raises(SystemExit):
        importlib.import_module(module).main(["--help"])
    text = capsys.readouterr().out.split("\nexamples:\n", 1)[1].replace("\\\n", " ")
    commands = [line.split("#")[0] for line in text.splitlines() if line.startswith("  gedge-")]
    serving = [c for c in commands if " serve " in c or " place --agents " in c]
    assert serving, text
    for command in serving:
        tls = " --tls-cert " in command or " --tls-csr" in command or " --agent-tls-ca " in command
        assert "--insecure" in command or tls, f"fails as written (no TLS files, no --insecure): {command}"
