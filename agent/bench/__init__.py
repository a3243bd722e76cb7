"""Measure the acceleration on a node with the agent's own appliers: data path and CPU pinning."""
