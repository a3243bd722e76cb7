"""CPUs (online state, core, package, thread siblings) and NUMA nodes (CPUs, memory, distances)."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from agent.discovery.sysfs import SysfsTree
from gedge_model import Cpu, NumaNode

CPU_DIR = "sys/devices/system/cpu"
NODE_DIR = "sys/devices/system/node"
_CPU_NAME = re.compile(r"^cpu(\d+)$")
_NODE_NAME = re.compile(r"^node(\d+)$")
_MEMTOTAL = re.compile(r"MemTotal:\s*(\d+)\s*kB")


@dataclass(frozen=True)
class CpuInventory:
    cpus: tuple[Cpu, ...]
    numa_nodes: tuple[NumaNode, ...]


def read_cpus(fs: SysfsTree) -> CpuInventory:
    """CPUs and NUMA nodes under `fs.root`.

    A NUMA node's `cpus` are its online CPUs (what can be pinned); an offline
    CPU still names its node in `Cpu.numa_node`.

    A kernel without NUMA (no node directories) is one node 0 holding every CPU.
    NUMA nodes whose CPU lists overlap contradict each other; like hwloc, the
    description is then dropped for one node holding every CPU, with a warning.
    """
    cpu_ids = _cpu_ids(fs)
    online_ids = _online_ids(fs, cpu_ids)
    nodes = _read_numa_nodes(fs, cpu_ids)
    node_of: dict[int, int] = {}
    for node in nodes:
        for member in node.cpus:
            node_of.setdefault(member, node.id)
    cpus = tuple(
        _read_cpu(fs, cpu_id, cpu_id in online_ids, node_of.get(cpu_id)) for cpu_id in sorted(cpu_ids)
    )
    if any(name.startswith("node") for name in fs.listdir(NODE_DIR)):
        for cpu in cpus:
            if cpu.online and cpu.numa_node is None:
                fs.warn(f"{fs.shown(f'{CPU_DIR}/cpu{cpu.id}')}: online but in no NUMA node's CPU list")
    _warn_split_siblings(fs, cpus)
    online_nodes = tuple(replace(node, cpus=tuple(c for c in node.cpus if c in online_ids)) for node in nodes)
    return CpuInventory(cpus, online_nodes)


def _warn_split_siblings(fs: SysfsTree, cpus: tuple[Cpu, ...]) -> None:
    """SMT siblings on different NUMA nodes (a VM's odd `-numa` layout): placement counts each CPU
    once, on its own node, as a core of its own; say so once per core."""
    node_of = {c.id: c.numa_node for c in cpus if c.online}
    told: set[tuple[int, ...]] = set()
    for cpu in cpus:
        siblings = tuple(s for s in cpu.thread_siblings if s in node_of)
        if not cpu.online or siblings in told:
            continue
        nodes = sorted({node for s in siblings if (node := node_of[s]) is not None})
        if len(nodes) > 1:
            told.add(siblings)
            fs.warn(
                f"{fs.shown(f'{CPU_DIR}/cpu{cpu.id}')}: SMT siblings {','.join(map(str, siblings))} lie on "
                f"NUMA nodes {','.join(map(str, nodes))}; each CPU counts once, on its own node"
            )


def _cpu_ids(fs: SysfsTree) -> set[int]:
    ids = {int(m.group(1)) for name in fs.listdir(CPU_DIR) if (m := _CPU_NAME.match(name))}
    if not ids:
        present = fs.read_cpulist(f"{CPU_DIR}/present") or fs.read_cpulist(f"{CPU_DIR}/possible")
        if present:
            ids = set(present)
        else:
            fs.warn(f"{fs.shown(CPU_DIR)}: no CPUs found")
    return ids


def _online_ids(fs: SysfsTree, cpu_ids: set[int]) -> set[int]:
    """A CPU's own `online` file decides; else the global online list; else it is online.

    CPU 0 usually has no `online` file because it cannot be unplugged.
    """
    global_online = fs.read_cpulist(f"{CPU_DIR}/online")
    online: set[int] = set()
    for cpu_id in cpu_ids:
        own = fs.read(f"{CPU_DIR}/cpu{cpu_id}/online")
        if own is not None and own in ("0", "1"):
            if own == "1":
                online.add(cpu_id)
            continue
        if own is not None:
            fs.warn(f"{fs.shown(f'{CPU_DIR}/cpu{cpu_id}/online')}: expected 0 or 1, got {own[:20]!r}")
        if global_online is None or cpu_id in global_online:
            online.add(cpu_id)
    return online


def _read_cpu(fs: SysfsTree, cpu_id: int, online: bool, numa_node: int | None) -> Cpu:
    topo = f"{CPU_DIR}/cpu{cpu_id}/topology"
    if not fs.is_dir(topo):
        if online:
            fs.warn(f"{fs.shown(topo)}: missing for an online CPU")
        return Cpu(cpu_id, online, numa_node=numa_node)
    siblings = fs.read_cpulist(f"{topo}/thread_siblings_list")
    if siblings is None:
        siblings = fs.read_cpumask(f"{topo}/thread_siblings", required=online)
    return Cpu(
        cpu_id,
        online,
        core_id=fs.read_int(f"{topo}/core_id", required=online),
        package_id=fs.read_int(f"{topo}/physical_package_id", required=online),
        numa_node=numa_node,
        thread_siblings=siblings or (cpu_id,),
    )


def _read_numa_nodes(fs: SysfsTree, cpu_ids: set[int]) -> tuple[NumaNode, ...]:
    node_ids = sorted(int(m.group(1)) for name in fs.listdir(NODE_DIR) if (m := _NODE_NAME.match(name)))
    if not node_ids:
        return (NumaNode(0, tuple(sorted(cpu_ids)), _meminfo_total(fs, "proc/meminfo"), ((0, 10),)),)
    cpus_of = {node_id: _node_cpus(fs, node_id) for node_id in node_ids}
    overlapping = _overlapping_nodes(cpus_of)
    if overlapping:
        first = node_ids[0]
        fs.warn(
            f"{fs.shown(NODE_DIR)}: NUMA nodes {overlapping} claim the same CPUs; "
            f"ignoring the NUMA description, node {first} holds every CPU"
        )
        memory = _meminfo_total(fs, f"{NODE_DIR}/node{first}/meminfo")
        all_cpus = tuple(sorted(set(cpu_ids).union(*cpus_of.values())))
        return (NumaNode(first, all_cpus, memory, ((first, 10),)),)
    distance_order = fs.read_cpulist(f"{NODE_DIR}/online") or tuple(node_ids)
    return tuple(
        NumaNode(
            node_id,
            cpus_of[node_id],
            _meminfo_total(fs, f"{NODE_DIR}/node{node_id}/meminfo"),
            _distances(fs, node_id, distance_order),
        )
        for node_id in node_ids
    )


def _node_cpus(fs: SysfsTree, node_id: int) -> tuple[int, ...]:
    base = f"{NODE_DIR}/node{node_id}"
    cpus = fs.read_cpulist(f"{base}/cpulist")
    if cpus is None:
        cpus = fs.read_cpumask(f"{base}/cpumap")
    if cpus is None:
        linked = [int(m.group(1)) for name in fs.listdir(base) if (m := _CPU_NAME.match(name))]
        if not linked:
            fs.warn(f"{fs.shown(base)}: no cpulist, cpumap or cpu links")
        cpus = tuple(sorted(linked))
    return cpus


def _overlapping_nodes(cpus_of: dict[int, tuple[int, ...]]) -> list[int]:
    owner: dict[int, int] = {}
    clashing: set[int] = set()
    for node_id, cpus in sorted(cpus_of.items()):
        for cpu in cpus:
            if cpu in owner:
                clashing.update((owner[cpu], node_id))
            else:
                owner[cpu] = node_id
    return sorted(clashing)


def _meminfo_total(fs: SysfsTree, rel: str) -> int | None:
    text = fs.read(rel)
    if text is None:
        return None
    m = _MEMTOTAL.search(text)
    if not m:
        fs.warn(f"{fs.shown(rel)}: no MemTotal line")
        return None
    return int(m.group(1)) * 1024


def _distances(fs: SysfsTree, node_id: int, order: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """The SLIT row of a node; its columns follow the online node ids in order (sparse ids included)."""
    rel = f"{NODE_DIR}/node{node_id}/distance"
    text = fs.read(rel)
    if text is None:
        return ()
    try:
        values = [int(v) for v in text.split()]
    except ValueError:
        fs.warn(f"{fs.shown(rel)}: not a list of numbers: {text[:40]!r}")
        return ()
    if len(values) != len(order):
        fs.warn(f"{fs.shown(rel)}: {len(values)} distances for {len(order)} online nodes")
        return ()
    return tuple(zip(order, values, strict=True))
