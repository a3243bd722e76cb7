"""Mechanisms the agent, the extender and gedge-flow share: CLI dispatch and logging, listen
addresses, bounded file loading, backoff, and Kubernetes list-then-watch."""
