"""Generated gRPC code for the kubelet device plugin API."""
