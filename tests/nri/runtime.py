"""A private containerd 2 with NRI on, a CRI client for it, and a one-binary local image.

containerd, its runc shim and a static `pause` come from tests/e2e/node/build_containerd.sh;
NRI calls plugins only for CRI containers, so the test drives containerd's CRI API
(the one kubelet speaks), generated at test time from the cri-api module's api.proto.
Everything lives under one temporary folder: root, state, sockets, NRI socket, cgroup parent.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import grpc

from tests.conftest import REPO

BUILD_SCRIPT = REPO / "tests/e2e/node/build_containerd.sh"
MODULE_DIR = REPO / "tests/e2e/node/containerd"
IMAGE = "localhost/gedge-test/pause:1"
RUNC = shutil.which("runc") or "/usr/sbin/runc"


def binary_dir() -> Path | None:
    """The built containerd binaries, or None when they are not built."""
    if not BUILD_SCRIPT.exists() or not Path(RUNC).exists():
        return None
    out = subprocess.run([str(BUILD_SCRIPT), "--print-dir"], capture_output=True, text=True, check=False)
    directory = Path(out.stdout.strip()) if out.returncode == 0 else None
    if directory is None or not (directory / ".complete").exists():
        return None
    return directory


def cri_modules(out: Path) -> tuple[ModuleType, ModuleType]:
    """runtime.v1 api_pb2 and api_pb2_grpc generated from the cri-api module containerd pins."""
    from grpc_tools import protoc

    found = subprocess.run(
        ["go", "list", "-m", "-f", "{{.Dir}}", "k8s.io/cri-api"],
        cwd=MODULE_DIR,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "GOFLAGS": "-mod=mod"},
    )
    proto_dir = Path(found.stdout.strip()) / "pkg/apis/runtime/v1"
    package = out / "cri_runtime_v1"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "api.proto").write_text((proto_dir / "api.proto").read_text())
    include = Path(protoc.__file__).parent / "_proto"
    args = ["protoc", f"-I{out}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}"]
    if protoc.main([*args, str(package / "api.proto")]) != 0:
        raise RuntimeError("protoc failed on the CRI api.proto")
    if str(out) not in sys.path:
        sys.path.insert(0, str(out))
    return importlib.import_module("cri_runtime_v1.api_pb2"), importlib.import_module(
        "cri_runtime_v1.api_pb2_grpc"
    )


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def oci_archive(binary: Path, into: Path) -> Path:
    """An OCI image archive of one static binary at /pause, named IMAGE."""
    layer_buf = io.BytesIO()
    with tarfile.open(fileobj=layer_buf, mode="w") as layer:
        info = tarfile.TarInfo("pause")
        data = binary.read_bytes()
        info.size, info.mode = len(data), 0o755
        layer.addfile(info, io.BytesIO(data))
    layer_bytes = layer_buf.getvalue()
    layer_digest = hashlib.sha256(layer_bytes).hexdigest()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": ["/pause"]},
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest}"]},
        }
    ).encode()
    config_digest = hashlib.sha256(config).hexdigest()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": f"sha256:{config_digest}",
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": f"sha256:{layer_digest}",
                    "size": len(layer_bytes),
                }
            ],
        }
    ).encode()
    manifest_digest = hashlib.sha256(manifest).hexdigest()
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": f"sha256:{manifest_digest}",
                    "size": len(manifest),
                    "platform": {"architecture": "amd64", "os": "linux"},
                    "annotations": {
                        "io.containerd.image.name": IMAGE,
                        "org.opencontainers.image.ref.name": "1",
                    },
                }
            ],
        }
    ).encode()
    archive = into / "pause-image.tar"
    with tarfile.open(archive, "w") as tar:
        _add(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        _add(tar, "index.json", index)
        for digest, blob in (
            (layer_digest, layer_bytes),
            (config_digest, config),
            (manifest_digest, manifest),
        ):
            _add(tar, f"blobs/sha256/{digest}", blob)
    return archive


CONFIG = """version = 3
root = "{d}/root"
state = "{d}/state"
temp = "{d}/tmp"

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[plugins."io.containerd.nri.v1.nri"]
  disable = false
  socket_path = "{d}/nri.sock"
  plugin_path = "{d}/nri-plugins"
  plugin_config_path = "{d}/nri-conf"
  plugin_registration_timeout = "5s"
  plugin_request_timeout = "5s"

[plugins."io.containerd.transfer.v1.local"]
  [[plugins."io.containerd.transfer.v1.local".unpack_config]]
    platform = "linux/amd64"
    snapshotter = "native"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "native"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{image}"

[plugins."io.containerd.cri.v1.runtime"]
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "{d}/cni"
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      runtime_path = "{bin}/containerd-shim-runc-v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "{runc}"
        SystemdCgroup = false
"""


@dataclass
class Containerd:
    bin: Path
    dir: Path
    process: subprocess.Popen | None = None
    log: Path | None = None

    @property
    def socket(self) -> Path:
        return self.dir / "containerd.sock"

    @property
    def nri_socket(self) -> Path:
        return self.dir / "nri.sock"

    def start(self, timeout: float = 60.0) -> None:
        for name in ("root", "state", "tmp", "nri-plugins", "nri-conf", "cni"):
            (self.dir / name).mkdir(parents=True, exist_ok=True)
        config = self.dir / "config.toml"
        config.write_text(CONFIG.format(d=self.dir, bin=self.bin, image=IMAGE, runc=RUNC))
        for stale in (self.socket, self.nri_socket):
            stale.unlink(missing_ok=True)
        self.log = self.dir / "containerd.log"
        env = {**os.environ, "PATH": f"{self.bin}:{os.environ.get('PATH', '')}"}
        self.process = subprocess.Popen(
            ["setpriv", "--pdeathsig", "KILL", str(self.bin / "containerd"), "--config", str(config)],
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + timeout
        while not (self.socket.exists() and self.nri_socket.exists()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"containerd did not start: {self.log.read_text()[-3000:]}")
            time.sleep(0.05)

    def ctr(self, *args: str) -> str:
        out = subprocess.run(
            [str(self.bin / "ctr"), "--address", str(self.socket), "-n", "k8s.io", *args],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(f"unix://{self.socket}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
