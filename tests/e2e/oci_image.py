"""Container images for the e2e node, written as OCI archives from files on this machine.

No registry is reachable, so every image a real pod runs is made here and
imported into containerd (`ctr -n k8s.io images import`):

- the sandbox image: the static `pause` binary build_containerd.sh builds;
- the workload image: Debian's static busybox (package busybox-static) with a
  link per applet, so pods run `sh -c` with cat, ip, nc, sleep...

An archive is one uncompressed layer, its config and manifest, and index.json
naming the image (`io.containerd.image.name`).
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

PAUSE_IMAGE = "localhost/gedge-e2e/pause:1"
BUSYBOX_IMAGE = "localhost/gedge-e2e/busybox:1"
BUSYBOX_PATHS = ("/bin/busybox", "/usr/bin/busybox")
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"
DIRECTORIES = ("bin", "dev", "etc", "proc", "sys", "tmp", "var", "run")


@dataclass(frozen=True)
class ImageFile:
    """One regular file (`source` copied) or symlink (`link` target) at `path` inside the image."""

    path: str
    source: Path | None = None
    link: str | None = None
    mode: int = 0o755


def _layer(files: Sequence[ImageFile]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in DIRECTORIES:
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
        for item in files:
            info = tarfile.TarInfo(item.path.lstrip("/"))
            info.mode = item.mode
            if item.link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, item.link
                tar.addfile(info)
                continue
            if item.source is None:
                raise ValueError(f"image file {item.path}: give a source or a link")
            data = item.source.read_bytes()
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _blob(tar: tarfile.TarFile, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def write_archive(
    path: Path,
    name: str,
    files: Sequence[ImageFile],
    *,
    entrypoint: Sequence[str] = (),
    cmd: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> Path:
    """Write an OCI image archive of `files` named `name` (a full reference) to `path`."""
    layer = _layer(files)
    environment = {"PATH": "/bin:/usr/bin:/sbin:/usr/sbin", **(env or {})}
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": list(entrypoint) or None,
            "Cmd": list(cmd) or None,
            "Env": [f"{k}={v}" for k, v in environment.items()],
        },
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(layer).hexdigest()}"]},
    }
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        layout = _json({"imageLayoutVersion": "1.0.0"})
        info = tarfile.TarInfo("oci-layout")
        info.size = len(layout)
        tar.addfile(info, io.BytesIO(layout))
        layer_ref = {"mediaType": LAYER, **_blob(tar, layer)}
        config_ref = {"mediaType": CONFIG, **_blob(tar, _json(config))}
        manifest = _json(
            {"schemaVersion": 2, "mediaType": MANIFEST, "config": config_ref, "layers": [layer_ref]}
        )
        manifest_ref = {"mediaType": MANIFEST, **_blob(tar, manifest)}
        manifest_ref["annotations"] = {
            "io.containerd.image.name": name,
            "org.opencontainers.image.ref.name": name.rpartition(":")[2],
        }
        manifest_ref["platform"] = {"architecture": "amd64", "os": "linux"}
        index = _json(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": [manifest_ref],
            }
        )
        info = tarfile.TarInfo("index.json")
        info.size = len(index)
        tar.addfile(info, io.BytesIO(index))
    return path


def pause_archive(path: Path, pause_binary: Path) -> Path:
    """The sandbox image: /pause, its entrypoint."""
    return write_archive(path, PAUSE_IMAGE, [ImageFile("/pause", pause_binary)], entrypoint=["/pause"])


def _static(binary: Path) -> bool:
    """No PT_INTERP program header: an ELF that needs no dynamic loader (x86-64 little-endian)."""
    with binary.open("rb") as elf:
        header = elf.read(64)
        if header[:4] != b"\x7fELF":
            return False
        phoff, phentsize, phnum = (
            int.from_bytes(header[32:40], "little"),
            int.from_bytes(header[54:56], "little"),
            int.from_bytes(header[56:58], "little"),
        )
        elf.seek(phoff)
        table = elf.read(phentsize * phnum)
    return all(int.from_bytes(table[i : i + 4], "little") != 3 for i in range(0, len(table), phentsize))


def busybox_binary() -> Path:
    """Debian's static busybox; a clear error naming the package when it is missing."""
    for candidate in BUSYBOX_PATHS:
        binary = Path(candidate)
        if binary.is_file() and _static(binary.resolve()):
            return binary
    raise FileNotFoundError(
        f"no static busybox at {' or '.join(BUSYBOX_PATHS)}: install Debian's busybox-static"
    )


def busybox_archive(path: Path) -> Path:
    """The workload image: /bin/busybox and a /bin link per applet; runs `sh` by default."""
    binary = busybox_binary()
    listed = subprocess.run([str(binary), "--list"], check=True, capture_output=True, text=True)
    applets = listed.stdout.split()
    files = [ImageFile("/bin/busybox", binary)]
    files += [ImageFile(f"/bin/{applet}", link="busybox") for applet in applets if applet != "busybox"]
    return write_archive(path, BUSYBOX_IMAGE, files, cmd=["sh"])


def renamed_archive(source: Path, path: Path, reference: str) -> Path:
    """A copy of the OCI archive `source` at `path` whose single image is named `reference`.

    containerd imports an archive's `org.opencontainers.image.ref.name` as the image's name; a short
    one (`gedge-accel:0.1.0`, as `make image` writes) the container runtime then looks up under
    docker.io/library/ and never finds. Blobs are copied unchanged.
    """
    with tarfile.open(source) as tar_in, tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar_out:
        for member in tar_in:
            if member.name.lstrip("./") != "index.json":
                tar_out.addfile(member, tar_in.extractfile(member) if member.isfile() else None)
                continue
            handle = tar_in.extractfile(member)
            assert handle is not None
            index = json.loads(handle.read())
            if len(index.get("manifests") or ()) != 1:
                raise ValueError(
                    f"{source}: index.json names {len(index.get('manifests') or ())} images, not 1"
                )
            annotations = index["manifests"][0].setdefault("annotations", {})
            annotations["org.opencontainers.image.ref.name"] = reference
            annotations["io.containerd.image.name"] = reference
            data = _json(index)
            info = tarfile.TarInfo(member.name)
            info.size = len(data)
            tar_out.addfile(info, io.BytesIO(data))
    return path
