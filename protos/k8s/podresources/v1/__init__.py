"""Generated gRPC code for the kubelet PodResources API."""
