"""The project image from `make image`, run as a real container in a private containerd.

The archive is what `make image` writes (build/gedge-accel-image.tar); `make test` builds it
first. Outside CI a missing archive skips these tests with the command that makes it.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.image.containerd import PrivateContainerd

REPO = Path(__file__).resolve().parents[2]
ARCHIVE = REPO / "build" / "gedge-accel-image.tar"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
TAG = f"gedge-accel:{VERSION}"

pytestmark = pytest.mark.root


def _archive_or_skip() -> Path:
    if not ARCHIVE.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{ARCHIVE} is missing: `make test` runs `make image` first")
        pytest.skip(f"no {ARCHIVE}: run `make image`")
    return ARCHIVE


def _oci_blob(tar: tarfile.TarFile, digest: str) -> bytes:
    member = tar.extractfile(f"blobs/{digest.replace(':', '/')}")
    assert member is not None, f"blob {digest} missing from the archive"
    return member.read()


def _oci_manifest_and_config(tar: tarfile.TarFile) -> tuple[dict[str, Any], dict[str, Any], str]:
    index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
    (entry,) = index["manifests"]
    manifest = json.loads(_oci_blob(tar, entry["digest"]))
    config = json.loads(_oci_blob(tar, manifest["config"]["digest"]))
    return manifest, config, entry.get("annotations", {}).get("org.opencontainers.image.ref.name", "")


@pytest.fixture(scope="module")
def image_archive() -> Path:
    return _archive_or_skip()


@pytest.fixture(scope="module")
def containerd(image_archive: Path) -> Iterator[tuple[PrivateContainerd, str]]:
    runtime = PrivateContainerd().start()
    try:
        runtime.ctr("images", "import", "--snapshotter", "native", "--all-platforms", str(image_archive))
        names = runtime.ctr("images", "list", "--quiet").split()
        matching = [name for name in names if name.endswith(TAG)]
        assert matching, f"importing {image_archive} gave {names}, none tagged {TAG}"
        yield runtime, matching[0]
    finally:
        runtime.stop()


_RUNS = iter(range(1_000_000))


def _run(
    containerd: tuple[PrivateContainerd, str],
    *argv: str,
    user: str | None = None,
    mounts: tuple[str, ...] = (),
) -> str:
    runtime, image = containerd
    args = ["run", "--rm", "--snapshotter", "native"]
    for mount in mounts:
        args += ["--mount", mount]
    if user is not None:
        args += ["--user", user]
    return runtime.ctr(*args, image, f"gedge-image-{os.getpid()}-{next(_RUNS)}", *argv, timeout=120)


def test_archive_is_an_oci_image_tagged_with_the_project_version(image_archive: Path) -> None:
    with tarfile.open(image_archive) as tar:
        assert json.loads(tar.extractfile("oci-layout").read())["imageLayoutVersion"]  # type: ignore[union-attr]
        manifest, config, ref_name = _oci_manifest_and_config(tar)
    assert ref_name.endswith(TAG)
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    labels = config["config"]["Labels"]
    assert labels["org.opencontainers.image.version"] == VERSION
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.source"].startswith("https://")
    user = config["config"]["User"]
    assert user and user.split(":")[0] not in {"0", "root"}, f"the image runs as {user!r} by default"


def test_image_holds_no_sources_tests_caches_compilers_or_keys(image_archive: Path) -> None:
    paths: set[str] = set()
    private_keys: list[str] = []
    with tarfile.open(image_archive) as tar:
        manifest, _, _ = _oci_manifest_and_config(tar)
        for layer in manifest["layers"]:
            blob = _oci_blob(tar, layer["digest"])
            data = gzip.decompress(blob) if blob[:2] == b"\x1f\x8b" else blob
            with tarfile.open(fileobj=io.BytesIO(data)) as layer_tar:
                for member in layer_tar:
                    name = member.name.removeprefix("./")
                    paths.add(name)
                    if member.isfile() and member.size < 1 << 20:
                        content = layer_tar.extractfile(member).read()  # type: ignore[union-attr]
                        if b"PRIVATE KEY-----" in content and name.endswith((".pem", ".key", ".crt")):
                            private_keys.append(name)
    assert not private_keys, f"the image holds private keys: {private_keys}"
    site = next(p.rsplit("/site-packages/", 1)[0] for p in paths if "/site-packages/agent/" in p)
    assert f"{site}/site-packages/agent/cli.py" in paths
    forbidden = {
        "the test suite": lambda p: p.startswith("tests/") or "/site-packages/tests/" in p,
        "the build stage's sources": lambda p: p.startswith("src/") or p == "src",
        "pip (installs at run time)": lambda p: "/site-packages/pip/" in p or p.endswith("/bin/pip"),
        "pip's cache": lambda p: "/.cache/pip" in p,
        "a C compiler": lambda p: p.endswith(("bin/gcc", "bin/cc", "bin/x86_64-linux-gnu-gcc-12")),
        "git metadata": lambda p: "/.git/" in p,
    }
    for what, matches in forbidden.items():
        hits = sorted(p for p in paths if matches(p))
        assert not hits, f"the image holds {what}: {hits[:5]}"


def test_the_three_commands_start_as_a_non_root_user(containerd: tuple[PrivateContainerd, str]) -> None:
    # One container for every check: each `ctr run` costs seconds here.
    checks = (
        "id -u; gedge-agent --version; gedge-extender --version; gedge-flow --version; "
        "gedge-extender serve --help >/dev/null && gedge-flow controller --help >/dev/null && echo helps; "
        # What the daemons import at start, the bytecode-only Kubernetes models among it.
        "python3 -c 'import kubernetes.client, agent.commands.serve, scheduler_extender.commands.serve, "
        "scheduler_extender.workflow.commands.controller; print(kubernetes.client.V1Pod().kind)'"
    )
    lines = _run(containerd, "sh", "-c", checks).splitlines()
    assert lines == [
        "65532",
        f"gedge-agent {VERSION}",
        f"gedge-extender {VERSION}",
        f"gedge-flow {VERSION}",
        "helps",
        "None",
    ]


def _topology_essentials(model: dict[str, Any]) -> dict[str, Any]:
    return {
        "cpus": sorted((c["id"], c["core_id"], c["package_id"], c["numa_node"]) for c in model["cpus"]),
        "numa_nodes": sorted((n["id"], tuple(n["cpus"]), n["memory_bytes"]) for n in model["numa_nodes"]),
        "pci_functions": sorted((p["address"], p["class_id"], p["numa_node"]) for p in model["pci_devices"]),
    }


def test_agent_in_the_image_sees_the_host_as_the_host_install_does(
    containerd: tuple[PrivateContainerd, str],
) -> None:
    inside = json.loads(
        _run(
            containerd,
            "gedge-agent",
            "topology",
            "--root",
            "/host",
            "--json",
            mounts=("type=bind,src=/sys,dst=/host/sys,options=rbind:ro",),
        )
    )
    host = json.loads(
        subprocess.run(
            [str(Path(sys.executable).parent / "gedge-agent"), "topology", "--json"],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        ).stdout
    )
    assert inside["cpus"] and inside["pci_devices"]
    assert _topology_essentials(inside) == _topology_essentials(host)


def _tool_dir(tmp_path: Path, *tools: str) -> Path:
    """A PATH folder holding only `tools`, linked from the host's."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for tool in tools:
        found = shutil.which(tool)
        assert found, f"{tool} is needed on the host for this test"
        (folder / tool).symlink_to(found)
    return folder


def test_no_builder_names_the_package_to_install(tmp_path: Path) -> None:
    path = _tool_dir(tmp_path, "bash", "sed", "head", "dirname")
    done = subprocess.run(
        ["bash", str(REPO / "image" / "build.sh")],
        capture_output=True,
        text=True,
        env={"PATH": str(path), "HOME": str(tmp_path)},
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "install Debian's package buildah" in done.stderr


def test_failed_build_names_the_stage_and_the_command(tmp_path: Path, image_archive: Path) -> None:
    # The project image is the base, so nothing is fetched: the failure is the RUN alone.
    broken = tmp_path / "Containerfile"
    broken.write_text(
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE} AS first\nRUN true\nFROM first AS second\nRUN exit 7\n"
    )
    done = subprocess.run(
        ["bash", str(REPO / "image" / "build.sh")],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "BASE_IMAGE": TAG,
            "CONTAINERFILE": str(broken),
            "IMAGE_ARCHIVE": str(tmp_path / "never.tar"),
        },
        timeout=600,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("make image: build failed at [2/2] STEP"), last
    assert "RUN exit 7" in last
    assert not (tmp_path / "never.tar").exists()
