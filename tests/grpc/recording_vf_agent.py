"""`gedge-agent serve` with the PF's VF netlink calls played by a recorder (no SR-IOV hardware here).

Run as `python recording_vf_agent.py <gedge-agent path> serve ...`: everything but the VF control is
the real daemon. Each `set` is appended as one JSON line to $GEDGE_TEST_VF_LOG.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

from agent.apply.checkpoint import VfSettings
from agent.commands import serve

ORIGINAL = VfSettings(mac="02:00:00:00:03:01", vlan=0, spoofchk=True, trust=False)


class RecordingVfControl:
    def __init__(self, log_path: str) -> None:
        self.log_path = log_path
        self.state: dict[tuple[str, int], VfSettings] = {}

    def get(self, pf: str, vf: int) -> VfSettings:
        return self.state.get((pf, vf), ORIGINAL)

    def set(self, pf: str, vf: int, settings: VfSettings) -> None:
        self.state[(pf, vf)] = settings
        with open(self.log_path, "a") as out:
            out.write(json.dumps({"pf": pf, "vf": vf, **dataclasses.asdict(settings)}) + "\n")


def main() -> int:
    control = RecordingVfControl(os.environ["GEDGE_TEST_VF_LOG"])
    serve.make_vf_control = lambda config: control
    from agent.cli import main as cli

    return cli(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
