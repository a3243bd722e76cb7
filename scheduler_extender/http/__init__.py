"""The kube-scheduler extender over HTTP(S)."""

from scheduler_extender.http.app import MAX_BODY_BYTES, build_app, server_ssl_context, start_server

__all__ = ["MAX_BODY_BYTES", "build_app", "server_ssl_context", "start_server"]
