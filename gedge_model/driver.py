"""NVIDIA driver versions, and the node labels and pod annotation that carry them.

Shared by the agent (which labels its Node with the driver NVML reports), the
workflow composer (which restricts a step to nodes whose driver runs its CUDA)
and the extender (which refuses nodes whose reported driver is older than a
pod's minimum). A version is "major.minor[.patch]" ("535.54.03", "550.54");
`driver_code` turns it into one integer so that kube-scheduler's `Gt` node
affinity can compare versions.
"""

from __future__ import annotations

import re
from typing import NamedTuple

LABEL_DRIVER = "gedge.io/nvidia-driver"
LABEL_DRIVER_CODE = "gedge.io/nvidia-driver-code"
LABEL_GPU_COUNT = "gedge.io/gpu-count"
ANNOTATION_MIN_DRIVER = "gedge.io/min-nvidia-driver"

_DRIVER = re.compile(r"^(\d{1,4})\.(\d{1,3})(?:\.(\d{1,3}))?$")


class DriverVersionError(ValueError):
    """Text that is not an NVIDIA driver version; the message quotes it."""


class DriverVersion(NamedTuple):
    """Ordered as the driver releases are: 535.54.03 < 535.104.05 < 550.54."""

    major: int
    minor: int
    patch: int

    @property
    def code(self) -> int:
        return self.major * 1_000_000 + self.minor * 1_000 + self.patch


def parse_driver_version(version: object) -> DriverVersion:
    """`version` as NVML (nvmlSystemGetDriverVersion), a node label or an annotation gives it.

    Typed `object` because catalog YAML can hand a number (`min_driver: 550.54` is a float);
    raises DriverVersionError for anything but "major.minor[.patch]" text.
    """
    match = _DRIVER.match(version.strip()) if isinstance(version, str) else None
    if not match:
        raise DriverVersionError(f"{version!r} is not an NVIDIA driver version like 535.54.03")
    major, minor, patch = (int(p or 0) for p in match.groups())
    return DriverVersion(major, minor, patch)


def driver_code(version: str) -> int:
    """An NVIDIA driver version as one integer (major*10^6 + minor*10^3 + patch), for a Gt node affinity.

    "535.54.03" -> 535054003; "550.54" -> 550054000.
    """
    return parse_driver_version(version).code
