"""Compute devices by PCI class: GPUs and other display controllers, processing accelerators, FPGAs."""

from __future__ import annotations

from collections.abc import Iterable

from gedge_model import Accelerator, DeviceKind, PciDevice

_GPU_VENDORS = frozenset({0x10DE, 0x1002})  # NVIDIA, AMD
_FPGA_VENDORS = frozenset({0x10EE, 0x1172})  # Xilinx/AMD, Altera/Intel PSG

_DISPLAY = 0x03
_PROCESSING_ACCELERATOR = 0x12
_COPROCESSOR = (0x0B, 0x40)
_3D_CONTROLLER = 0x02


def classify(dev: PciDevice) -> DeviceKind | None:
    """What a PCI function computes as, or None when it is not an accelerator.

    3D controllers and NVIDIA/AMD display controllers are GPUs; other display
    controllers (a server's BMC VGA) are DISPLAY. Processing accelerators and
    co-processors are ASICs unless they come from an FPGA vendor.
    """
    if dev.base_class == _DISPLAY:
        if dev.subclass == _3D_CONTROLLER or dev.vendor_id in _GPU_VENDORS:
            return DeviceKind.GPU
        return DeviceKind.DISPLAY
    if dev.base_class == _PROCESSING_ACCELERATOR or (dev.base_class, dev.subclass) == _COPROCESSOR:
        return DeviceKind.FPGA if dev.vendor_id in _FPGA_VENDORS else DeviceKind.ASIC
    return None


def find_accelerators(devices: Iterable[PciDevice]) -> tuple[Accelerator, ...]:
    return tuple(
        Accelerator(dev.address, kind, dev.vendor_id, dev.device_id)
        for dev in devices
        if (kind := classify(dev)) is not None
    )
