"""`gedge-flow get/delete/logs` without a usable cluster: one line naming why, no traceback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from scheduler_extender.workflow import cli
from tests.support.kubeconfig import token_kubeconfig


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.mark.parametrize("command", [["get", "wf"], ["delete", "wf"], ["logs", "wf", "step"]])
def test_an_unreachable_api_server_is_one_line_and_exit_1(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kubeconfig = token_kubeconfig(tmp_path / "kubeconfig", "http://127.0.0.1:1")
    assert cli.main([*command, "--kubeconfig", str(kubeconfig)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"gedge-flow {command[0]}: no cluster: API server 127.0.0.1:1 unreachable")


def test_a_config_that_does_not_load_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", "/nonexistent")
    assert cli.main(["get", "wf"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gedge-flow get: no cluster: kubeconfig")
    kubeconfig = token_kubeconfig(tmp_path / "kubeconfig", "http://127.0.0.1:1")
    assert cli.main(["delete", "wf", "--kubeconfig", str(kubeconfig), "--context", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--kubeconfig {kubeconfig} --context nope" in err
    assert cli.main(["logs", "wf", "s", "--kubeconfig", "/etc/passwd"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--kubeconfig /etc/passwd" in err
