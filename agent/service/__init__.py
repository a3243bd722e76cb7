"""The agent's gRPC service: the node state it reports, change detection, and the server around them."""
