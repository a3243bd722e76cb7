"""Serve tasks against the in-memory API boundary: Deployment + Service, Succeeded once Ready, kept
after the workflow, rolled by a later run that changes the model, expired by ttl, deleted with it."""

from __future__ import annotations

import dataclasses
import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from scheduler_extender.workflow import cli
from scheduler_extender.workflow.catalog import load_catalog_file
from scheduler_extender.workflow.controller import ControllerConfig, WorkflowController, sweep_expired_serves
from scheduler_extender.workflow.outputs import encode
from scheduler_extender.workflow.serve import ANNOTATION_EXPIRES, ANNOTATION_HASH
from tests.workflow.memory_api import InMemoryApi, MemoryKubelet

REPO = Path(__file__).resolve().parents[2]
CATALOG = load_catalog_file(str(REPO / "deploy" / "runtime-catalog" / "runtime-catalog.yaml"))
NS = "ml"
FAST = ControllerConfig(watch_timeout_seconds=1, max_wait_seconds=0.5, serve_poll_seconds=0.05)


def _workflow(
    name: str, model_version: str = "2.11", ttl: str | None = None, claim: str | None = None
) -> dict[str, Any]:
    serve: dict[str, Any] = {"name": "resnet", "port": 8501, "replicas": 2}
    if ttl:
        serve["ttl"] = ttl
    return {
        "apiVersion": "gedge.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": name},
        "spec": {
            "workspace": {"claimName": claim} if claim else {"size": "5Gi"},
            "tasks": [
                {
                    "name": "train",
                    "workspace": {},
                    "container": {"image": "trainer", "command": ["python", "train.py"]},
                    "outputs": {"parameters": [{"name": "model", "valueFrom": {"path": "/tmp/model"}}]},
                },
                {
                    "name": "serve",
                    "dependencies": ["train"],
                    "model": {"framework": "tensorflow", "version": model_version, "format": "savedmodel"},
                    "workspace": {"readOnly": True},
                    "serve": serve,
                    "container": {
                        "image": "tf-serving",
                        "args": ["--model", "{{tasks.train.outputs.parameters.model}}"],
                    },
                    "resources": {"limits": {"gedge.io/gpu-shared": 1}},
                },
            ],
        },
    }


def _model_path(pod: dict[str, Any]) -> str | None:
    if pod["metadata"]["labels"].get("gedge.io/task") != "train":
        return None
    return encode({"model": f"/workspace/models/{pod['metadata']['labels']['gedge.io/workflow']}"})


def _run(api: InMemoryApi, name: str, stop: threading.Event | None = None):
    return WorkflowController(api, catalog=CATALOG, config=FAST).run(NS, name, stop=stop)


def test_train_then_serve_becomes_ready_and_stays_after_the_workflow():
    api = InMemoryApi()
    workflow = api.create_workflow(NS, _workflow("run-1"))
    with MemoryKubelet(api, outputs=_model_path):
        status = _run(api, "run-1")
    assert status.phase == "Succeeded", status.message
    serve = status.tasks["serve"]
    assert serve.phase == "Succeeded" and serve.message == ""
    assert serve.endpoint == "resnet.ml.svc:8501"
    assert serve.runtime == "tf2-py38-2.11,cuda-11.2,cudnn-8.2.1"
    assert "tf2-py38-2.11 takes tensorflow>=2.0,<=2.11" in serve.runtime_reason
    deployment = api.get_deployment(NS, "resnet")
    service = api.get_service(NS, "resnet")
    uid = workflow["metadata"]["uid"]
    assert [r["uid"] for r in deployment["metadata"]["ownerReferences"]] == [uid]
    assert [r["uid"] for r in service["metadata"]["ownerReferences"]] == [uid]
    template = deployment["spec"]["template"]
    container = template["spec"]["containers"][0]
    assert container["args"] == ["--model", "/workspace/models/run-1"], "the trained model's path"
    assert container["ports"][0]["containerPort"] == 8501
    assert container["readinessProbe"]["tcpSocket"] == {"port": 8501}
    assert template["spec"]["schedulerName"] == "gedge-scheduler"
    assert template["spec"]["restartPolicy"] == "Always"
    assert template["metadata"]["annotations"]["gedge.io/runtime"] == "tf2-py38-2.11,cuda-11.2,cudnn-8.2.1"
    assert template["metadata"]["annotations"]["gedge.io/min-nvidia-driver"] == "460.27.03"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/workspace"]["readOnly"] is True
    claim = {v["name"]: v for v in template["spec"]["volumes"]}["gedge-workspace"]["persistentVolumeClaim"]
    assert claim == {"claimName": "run-1-workspace"}
    assert deployment["spec"]["selector"] == {"matchLabels": {"gedge.io/serve": "resnet"}}
    assert service["spec"]["selector"] == {"gedge.io/serve": "resnet"}
    assert service["spec"]["ports"][0]["port"] == 8501
    pvc = api.get_claim(NS, "run-1-workspace")
    assert pvc["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert pvc["metadata"]["ownerReferences"][0]["uid"] == uid
    assert all(
        p["spec"]["containers"][0]["volumeMounts"][0]["mountPath"] == "/workspace" for p in api.pods.values()
    )


def _serve_attempt(api: InMemoryApi) -> dict[str, Any]:
    tasks = api.workflows[(NS, "run-1")].get("status", {}).get("tasks", {})
    attempts = tasks.get("serve", {}).get("attempts") or [{}]
    return {**attempts[-1], "taskMessage": tasks.get("serve", {}).get("message")}


def test_the_serve_step_is_running_until_every_replica_is_ready():
    api = InMemoryApi()
    api.create_workflow(NS, _workflow("run-1"))
    stop = threading.Event()
    with MemoryKubelet(api, outputs=_model_path, serve_ready=False):
        thread = threading.Thread(target=_run, args=(api, "run-1", stop))
        thread.start()
        try:
            with api._cond:
                assert api._cond.wait_for(
                    lambda: (_serve_attempt(api)["taskMessage"] or "").startswith("0/2 replicas ready"),
                    timeout=30,
                )
            assert _serve_attempt(api)["phase"] == "Pending"
            api.rollout(NS, "resnet", ready=1)
            with api._cond:
                assert api._cond.wait_for(lambda: _serve_attempt(api).get("phase") == "Running", timeout=30)
            assert api.workflows[(NS, "run-1")]["status"]["phase"] == "Running"
            assert "taskMessage" not in {k for k, v in _serve_attempt(api).items() if v}
            api.rollout(NS, "resnet")
            thread.join(timeout=30)
            assert not thread.is_alive()
        finally:
            stop.set()
            thread.join(timeout=10)
    stored = api.workflows[(NS, "run-1")]["status"]
    assert stored["phase"] == "Succeeded"
    assert stored["tasks"]["serve"]["endpoint"] == "resnet.ml.svc:8501"
    assert "message" not in stored["tasks"]["serve"], "a Succeeded step keeps no stale message"


def test_a_later_run_rolls_the_server_only_when_its_model_changes():
    api = InMemoryApi()
    api.create_workflow(NS, _workflow("run-1", claim="models"))
    with MemoryKubelet(
        api,
        outputs=lambda pod: (
            encode({"model": "/workspace/models/v1"})
            if pod["metadata"]["labels"]["gedge.io/task"] == "train"
            else None
        ),
    ):
        assert _run(api, "run-1").phase == "Succeeded"
        first = api.get_deployment(NS, "resnet")
        first_ip = api.get_service(NS, "resnet")["spec"]["clusterIP"]
        run2 = api.create_workflow(NS, _workflow("run-2", claim="models"))
        assert _run(api, "run-2").phase == "Succeeded"
        same = api.get_deployment(NS, "resnet")
        assert same["metadata"]["generation"] == first["metadata"]["generation"], "same model: nothing rolls"
        assert same["metadata"]["ownerReferences"][0]["uid"] == run2["metadata"]["uid"], "taken over"
        assert (
            same["metadata"]["annotations"][ANNOTATION_HASH]
            == first["metadata"]["annotations"][ANNOTATION_HASH]
        )
    with MemoryKubelet(
        api,
        outputs=lambda pod: (
            encode({"model": "/workspace/models/v2"})
            if pod["metadata"]["labels"]["gedge.io/task"] == "train"
            else None
        ),
    ):
        run3 = api.create_workflow(NS, _workflow("run-3", model_version="2.14", claim="models"))
        status = _run(api, "run-3")
    assert status.phase == "Succeeded", status.message
    rolled = api.get_deployment(NS, "resnet")
    assert rolled["metadata"]["generation"] == first["metadata"]["generation"] + 1, "a new model rolls"
    assert rolled["metadata"]["ownerReferences"][0]["uid"] == run3["metadata"]["uid"]
    container = rolled["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["--model", "/workspace/models/v2"]
    assert rolled["spec"]["template"]["metadata"]["annotations"]["gedge.io/runtime"] == (
        "tf2-py310-2.15,cuda-12.2,cudnn-8.9"
    ), "a TensorFlow 2.14 model needs the newer stack"
    service = api.get_service(NS, "resnet")
    assert service["metadata"]["ownerReferences"][0]["uid"] == run3["metadata"]["uid"]
    assert service["spec"]["clusterIP"] == first_ip, "the Service keeps its address across runs"


def test_ttl_marks_the_serve_when_the_workflow_ends_and_the_sweep_deletes_it():
    api = InMemoryApi()
    api.create_workflow(NS, _workflow("run-1", ttl="1h"))
    with MemoryKubelet(api, outputs=_model_path):
        status = _run(api, "run-1")
    expires = api.get_deployment(NS, "resnet")["metadata"]["annotations"][ANNOTATION_EXPIRES]
    assert datetime.fromisoformat(expires.replace("Z", "+00:00")) == status.finished_at + timedelta(hours=1)
    assert sweep_expired_serves(api, NS, status.finished_at + timedelta(minutes=59)) == []
    assert sweep_expired_serves(api, NS, status.finished_at + timedelta(hours=1)) == ["resnet"]
    assert ("Deployment", NS, "resnet") not in api.objects and ("Service", NS, "resnet") not in api.objects


def test_a_later_run_clears_an_earlier_runs_expiry():
    api = InMemoryApi()
    api.create_workflow(NS, _workflow("run-1", ttl="1h"))
    with MemoryKubelet(api, outputs=_model_path):
        _run(api, "run-1")
        api.create_workflow(NS, _workflow("run-2"))
        _run(api, "run-2")
    assert ANNOTATION_EXPIRES not in api.get_deployment(NS, "resnet")["metadata"]["annotations"]


def test_a_restarted_controller_keeps_the_recorded_runtime_and_does_not_redeploy():
    api = InMemoryApi()
    api.create_workflow(NS, _workflow("run-1"))
    stop = threading.Event()
    with MemoryKubelet(api, outputs=_model_path, serve_ready=False):
        thread = threading.Thread(target=_run, args=(api, "run-1", stop))
        thread.start()
        with api._cond:
            api._cond.wait_for(lambda: ("Deployment", NS, "resnet") in api.objects, timeout=30)
        stop.set()
        thread.join(timeout=30)
    stored = api.workflows[(NS, "run-1")]["status"]
    assert stored["tasks"]["serve"]["phase"] == "Running"
    created = api.get_deployment(NS, "resnet")["metadata"]["uid"]
    # the catalog changes meanwhile: a fresh choice would now be the TensorFlow 2.15 stack
    changed = dataclasses.replace(
        CATALOG,
        components=tuple(
            dataclasses.replace(c, models=()) if c.name == "tf2-py38" else c for c in CATALOG.components
        ),
    )
    with MemoryKubelet(api, outputs=_model_path):
        status = WorkflowController(api, catalog=changed, config=FAST).run(NS, "run-1")
    assert status.phase == "Succeeded"
    assert api.get_deployment(NS, "resnet")["metadata"]["uid"] == created
    assert api.replaced == [], "the serve it made before the restart is the one it waited for"
    assert status.tasks["serve"].runtime == "tf2-py38-2.11,cuda-11.2,cudnn-8.2.1"


def test_delete_removes_the_workflow_its_serve_and_its_claim(monkeypatch, capsys):
    api = InMemoryApi()
    api.create_workflow(NS, _workflow("run-1"))
    with MemoryKubelet(api, outputs=_model_path):
        _run(api, "run-1")
    api.collect_garbage = False
    monkeypatch.setattr("scheduler_extender.workflow.commands.delete.connect", lambda args: api)
    assert cli.main(["delete", "run-1", "-n", NS]) == 0
    out = capsys.readouterr().out
    assert "deleted with 1 pod(s), serve(s) resnet, its workspace claim" in out
    assert api.objects == {} and api.pods == {}


def test_a_name_taken_by_something_else_is_refused_not_overwritten():
    api = InMemoryApi()
    api.create_deployment(
        NS, {"metadata": {"name": "resnet", "labels": {"app": "theirs"}}, "spec": {"replicas": 1}}
    )
    api.create_workflow(NS, _workflow("run-1"))
    with MemoryKubelet(api, outputs=_model_path):
        status = _run(api, "run-1")
    assert status.phase == "Failed"
    assert "Deployment resnet exists and is not a gedge-flow serve" in status.tasks["serve"].message
    assert api.get_deployment(NS, "resnet")["metadata"]["labels"] == {"app": "theirs"}


def test_logs_of_a_serve_step_come_from_its_newest_pod(monkeypatch, capsys):
    api = InMemoryApi()
    api.create_workflow(NS, _workflow("run-1"))
    with MemoryKubelet(api, outputs=_model_path):
        _run(api, "run-1")
    template = api.get_deployment(NS, "resnet")["spec"]["template"]
    api.create_pod(
        NS, {"metadata": {**template["metadata"], "name": "resnet-abc-1"}, "spec": template["spec"]}
    )
    api.logs["resnet-abc-1"] = "serving on 8501\n"
    monkeypatch.setattr("scheduler_extender.workflow.commands.logs.connect", lambda args: api)
    assert cli.main(["logs", "run-1", "serve", "-n", NS]) == 0
    assert capsys.readouterr().out.endswith("serving on 8501\n")


def test_run_shows_the_serve_endpoint_when_it_is_ready(monkeypatch, capsys, tmp_path):
    api = InMemoryApi()
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump(_workflow("run-1")))
    monkeypatch.setattr("scheduler_extender.workflow.commands.run.connect", lambda args: api)
    with MemoryKubelet(api, outputs=_model_path):
        assert (
            cli.main(
                [
                    "run",
                    str(path),
                    "-n",
                    NS,
                    "--catalog",
                    str(REPO / "deploy" / "runtime-catalog" / "runtime-catalog.yaml"),
                ]
            )
            == 0
        )
    out = capsys.readouterr().out
    assert "serve Succeeded serving at resnet.ml.svc:8501" in out
    assert "serving at resnet.ml.svc:8501" in out.split("STEP", 1)[1], "and in the final tree"


def test_an_unreadable_deployment_is_waited_on_not_given_up():
    from scheduler_extender.workflow.kube import ApiError

    api = InMemoryApi()
    api.create_workflow(NS, _workflow("run-1"))
    real = api.get_deployment
    failures = {"left": 3}

    def flaky(namespace: str, name: str) -> dict[str, Any]:
        if failures["left"]:
            failures["left"] -= 1
            raise ApiError(500, "etcdserver: request timed out")
        return real(namespace, name)

    api.get_deployment = flaky  # type: ignore[method-assign]
    with MemoryKubelet(api, outputs=_model_path):
        status = _run(api, "run-1")
    assert failures["left"] == 0
    assert status.phase == "Succeeded"
    assert len(status.tasks["serve"].attempts) == 1 and status.tasks["serve"].attempts[0].phase == "Succeeded"
