import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import main
from agent.commands.topology import render, render_matrix
from agent.discovery import NvmlGpuSource, discover
from gedge_model import DeviceKind, NodeTopology, from_json
from tests.conftest import NVIDIA_SMI_FIXTURES, REPO
from tests.discovery.gpu_box import build_box

SNAPSHOT = "40intel64-2g2n4c+pcilocality"


@pytest.mark.parametrize(
    ("model", "fixture"), [("H100", "h100-8gpu-topo.txt"), ("A100", "a100-8gpu-topo.txt")]
)
def test_gpu_matrix_matches_the_published_nvidia_smi_output(tmp_path: Path, model: str, fixture: str) -> None:
    box = build_box(tmp_path, model)
    topo = discover(box.root, gpu_source=NvmlGpuSource(box.nvml))
    ours = [line.split() for line in render_matrix(topo, kinds={DeviceKind.GPU})]
    theirs = [
        line.split() for line in (NVIDIA_SMI_FIXTURES / fixture).read_text().splitlines() if line.strip()
    ]
    assert ours == theirs


def test_full_matrix_has_nics_and_a_legend(tmp_path: Path) -> None:
    box = build_box(tmp_path, "H100")
    topo = discover(box.root, gpu_source=NvmlGpuSource(box.nvml))
    text = render(topo)
    header, *rows = text.split("\n\n")[0].splitlines()
    labels = header.split()[:-4]
    assert labels[:8] == [f"GPU{i}" for i in range(8)] and labels[8:12] == ["NIC0", "NIC1", "NIC2", "NIC3"]
    cell = {row.split()[0]: dict(zip(labels, row.split()[1:], strict=False)) for row in rows}
    assert cell["GPU0"]["NIC0"] == "PIX"  # same PCIe switch
    assert cell["GPU0"]["NIC1"] == "NODE"  # other host bridge, same socket
    assert cell["GPU0"]["NIC2"] == "SYS"
    assert cell["GPU0"]["NVME0"] == "PHB"  # other root port of the same host bridge
    assert cell["VF0"]["VF1"] == "PIX"  # two VFs of one PF
    assert "  NV#  = Connection traversing a bonded set of # NVLinks (weight 1)" in text
    assert "  NIC0: ens0np0 (0000:15:00.0)" in text
    assert "  CPUs: 208 online (0-207), 0 offline (-)" in text


def test_command_on_a_snapshot(snapshot_roots: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["topology", "--root", str(snapshot_roots[SNAPSHOT]), "--node-name", "lab-1"]) == 0
    out = capsys.readouterr().out
    first = out.splitlines()[0].split()
    assert first == [
        "DISPLAY0",
        "NIC0",
        "NIC1",
        "NIC2",
        "NIC3",
        "NIC4",
        "RDMA0",
        "CPU",
        "Affinity",
        "NUMA",
        "Affinity",
    ]
    assert "Node lab-1:" in out
    assert "  NUMA nodes: 4 (0-3)" in out and "  PCI devices: 37;" in out
    row = next(line for line in out.splitlines() if line.startswith("NIC4"))
    assert row.split()[-2:] == ["2,6,10,14,18,22,26,30,34,38", "2"]


def test_json_is_the_full_model(snapshot_roots: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    root = snapshot_roots[SNAPSHOT]
    assert main(["topology", "--root", str(root), "--json", "--timeslice-replicas", "3"]) == 0
    topo = from_json(NodeTopology, capsys.readouterr().out)
    assert topo == discover(root)


def test_weights_file_and_bad_input(
    tmp_path: Path, snapshot_roots: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root = str(snapshot_roots[SNAPSHOT])
    weights = tmp_path / "weights.yaml"
    weights.write_text("PIX: 1.5\nsys: 9\n")
    assert main(["topology", "--root", root, "--weights", str(weights)]) == 0
    out = capsys.readouterr().out
    assert "(weight 1.5)" in out and "(weight 9)" in out
    weights.write_text("PCIE: 2\n")
    assert main(["topology", "--root", root, "--weights", str(weights)]) == 2
    assert f"--weights {weights}: distance weight for unknown level 'PCIE'" in capsys.readouterr().err
    assert main(["topology", "--root", str(tmp_path / "nowhere")]) == 2
    assert f"--root {tmp_path / 'nowhere'}: no such directory" in capsys.readouterr().err
    assert main(["topology", "--root", root, "--timeslice-replicas", "0"]) == 2


def test_a_root_that_is_not_a_sysfs_tree_is_refused(
    tmp_path: Path, snapshot_roots: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The folder above an unpacked snapshot, or the archive itself, is a mistake named on one line,
    not an empty node."""
    parent = str(snapshot_roots[SNAPSHOT].parent)
    assert main(["topology", "--root", parent]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"gedge-agent topology: --root {parent}: no sys/devices/system/cpu under it "
        "(give / or the folder of an unpacked sysfs snapshot)\n"
    )
    archive = tmp_path / "snapshot.tar.bz2"
    archive.write_bytes(b"")
    assert main(["topology", "--root", str(archive)]) == 2
    assert "not a directory (unpack a snapshot archive and give its folder)" in capsys.readouterr().err


def test_a_display_controller_is_named_by_its_ids_once(
    snapshot_roots: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The snapshot's VGA function (a BMC's display) is listed as what it is, its address once."""
    assert main(["topology", "--root", str(snapshot_roots["2pa-pcidomain32bits"])]) == 0
    out = capsys.readouterr().out
    assert "  DISPLAY0: 1013:00b8 display controller (not a GPU) (0000:00:02.0)" in out


def test_console_script_runs_on_this_machine() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "agent.cli", "topology"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "Legend:" in done.stdout and "CPUs:" in done.stdout


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("PIX: -1\n", "distance weight for PIX is -1; it must be a number >= 0"),
        ("x: .nan\n", "distance weight for X is nan; it must be a number >= 0"),
        ("PIX: two\n", "distance weight for PIX is 'two'; it must be a number >= 0"),
        (
            "PIX: 3.5\n",
            "distance weight for PXB (3) is below PIX's (3.5); weights must keep the order X <= NV",
        ),
        ("SYS: 1\n", "distance weight for SYS (1) is below NODE's (4)"),
        ("node_name: " + "[" * 100_000 + "]" * 100_000 + "\n", "nested deeper than 64 levels"),
    ],
)
def test_weights_out_of_order_negative_or_too_deep_are_refused(
    tmp_path: Path, snapshot_roots: dict[str, Path], capsys: pytest.CaptureFixture[str], text: str, why: str
) -> None:
    weights = tmp_path / "weights.yaml"
    weights.write_text(text)
    assert main(["topology", "--root", str(snapshot_roots[SNAPSHOT]), "--weights", str(weights)]) == 2
    err = capsys.readouterr().err
    assert f"--weights {weights}: " in err and why in err


def test_equal_neighbouring_weights_are_kept(
    tmp_path: Path, snapshot_roots: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    weights = tmp_path / "weights.yaml"
    weights.write_text("PHB: 3\nNODE: 3\n")
    assert main(["topology", "--root", str(snapshot_roots[SNAPSHOT]), "--weights", str(weights)]) == 0
    assert "(weight 3)" in capsys.readouterr().out


def test_a_reader_that_closes_early_ends_the_command_quietly(snapshot_roots: dict[str, Path]) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write to stdout now fails with EPIPE
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "agent.cli",
                "topology",
                "--json",
                "--root",
                str(snapshot_roots[SNAPSHOT]),
            ],
            cwd=REPO,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert done.stderr == ""
    assert done.returncode == 141
