"""kubelet PodResources client tests."""
