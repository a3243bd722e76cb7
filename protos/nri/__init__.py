"""NRI (Node Resource Interface) API, vendored from containerd/nri, and its generated code."""
