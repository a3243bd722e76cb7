"""A kubeconfig for a plain-HTTP test API server (a fake or an unreachable address), bearer token auth."""

from __future__ import annotations

from pathlib import Path

import yaml


def token_kubeconfig(path: Path, server: str, token: str = "t") -> Path:
    """Write a kubeconfig for `server` with one context, `here`, authenticating by `token`; returns `path`."""
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": {"token": token}}],
                "contexts": [{"name": "here", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "here",
            }
        )
    )
    return path
