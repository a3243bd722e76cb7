from gedge_model import NodeTopology, PciDevice


def _pci(address: str, numa: int | None) -> PciDevice:
    return PciDevice(address, 0x030200, 0x10DE, 0x2330, "pci0000:00", (), numa_node=numa)


def test_numa_of_reads_the_functions_node_and_says_none_where_the_kernel_has_none():
    topology = NodeTopology(
        node_name="n",
        pci_devices=(_pci("0000:03:00.0", 1), _pci("0000:04:00.0", -1), _pci("0000:05:00.0", None)),
    )
    assert topology.numa_of("0000:03:00.0") == 1
    assert topology.numa_of("0000:04:00.0") is None
    assert topology.numa_of("0000:05:00.0") is None
    assert topology.numa_of("0000:06:00.0") is None
    assert topology.numa_of(None) is None
