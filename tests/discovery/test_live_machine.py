"""Discovery on the machine the tests run on, checked against what other interfaces report."""

import os
import socket
from pathlib import Path

import psutil

from agent.discovery import discover
from gedge_model.cpulist import parse_cpulist


def test_live_cpus_numa_pci_and_interfaces() -> None:
    topo = discover("/")
    assert topo.node_name == os.uname().nodename
    assert set(topo.online_cpus) == set(parse_cpulist(Path("/sys/devices/system/cpu/online").read_text()))
    assert len(topo.online_cpus) == os.sysconf("SC_NPROCESSORS_ONLN") == psutil.cpu_count(logical=True)
    assert set(os.sched_getaffinity(0)) <= set(topo.online_cpus)
    node_dirs = {int(p.name[4:]) for p in Path("/sys/devices/system/node").glob("node[0-9]*")} or {0}
    assert {n.id for n in topo.numa_nodes} == node_dirs
    assert {c for n in topo.numa_nodes for c in n.cpus} == set(topo.online_cpus)
    assert {d.address for d in topo.pci_devices} == set(os.listdir("/sys/bus/pci/devices"))
    for dev in topo.pci_devices:
        text = Path(f"/sys/bus/pci/devices/{dev.address}/class").read_text()
        assert dev.class_id == int(text, 16)
    links = {
        name: next((a.address for a in addrs if a.family == psutil.AF_LINK), None)
        for name, addrs in psutil.net_if_addrs().items()
    }
    for nic in topo.interfaces:
        assert nic.name in links and links[nic.name] == nic.mac
        assert socket.if_nametoindex(nic.name) > 0
    assert "lo" not in {i.name for i in topo.interfaces}
