"""kubelet device plugins (API v1beta1) for the gedge.io resources of this node."""

from agent.deviceplugin.devices import PluginDevice, plugin_devices
from agent.deviceplugin.kube import KubernetesPendingPodSource
from agent.deviceplugin.manager import DEFAULT_PLUGIN_DIR, DevicePluginManager
from agent.deviceplugin.pods import PendingPod, PendingPodSource

__all__ = [
    "DEFAULT_PLUGIN_DIR",
    "DevicePluginManager",
    "KubernetesPendingPodSource",
    "PendingPod",
    "PendingPodSource",
    "PluginDevice",
    "plugin_devices",
]
