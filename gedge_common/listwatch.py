"""Kubernetes list-then-watch, the informer loop of the pod watch, the node targets and the
extender's allocation watch: list (the caller takes in the full state and returns the list's
resourceVersion), watch from that version, list again when the version has expired (410 Gone),
and back off on any other error, until stopped."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from gedge_common.backoff import Backoff

GONE = 410


def event_version(event: Mapping[str, Any]) -> str | None:
    """The resourceVersion an event carries: from a typed object's metadata or a raw dict's."""
    obj = event.get("object")
    if isinstance(obj, Mapping):
        version = (obj.get("metadata") or {}).get("resourceVersion")
    else:
        version = getattr(getattr(obj, "metadata", None), "resource_version", None)
    return str(version) if version else None


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


@dataclass(kw_only=True)
class ListWatch:
    """One list-then-watch loop.

    `relist()` lists, takes in what it found and returns the resourceVersion to watch from.
    `watch_call` is the API's list method (`CoreV1Api.list_pod_for_all_namespaces`) that
    `kubernetes.watch.Watch.stream` calls with `watch_args` and the version; each event goes to
    `handle`. When a watch ends at its timeout, `resume` True watches on from the last version seen,
    False lists again. 410 Gone lists again at once (`on_expired` is told); any other error is
    passed to `on_error(exc, delay_s)` and the loop waits the backoff's next delay (a successful
    list resets it). `stop()` ends the loop and the open watch."""

    relist: Callable[[], str]
    watch_call: Callable[..., Any]
    handle: Callable[[Mapping[str, Any]], None]
    backoff: Backoff
    on_error: Callable[[Exception, float], None]
    on_expired: Callable[[], None] | None = None
    watch_args: Mapping[str, Any] = field(default_factory=dict)
    resume: bool = False
    stopping: threading.Event = field(default_factory=threading.Event, init=False)
    _watch: Any = field(default=None, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)

    def start(self, name: str) -> None:
        """Run the loop in a daemon thread called `name`."""
        self.stopping.clear()
        self._thread = threading.Thread(target=self.run, name=name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        watch = self._watch
        if watch is not None:
            watch.stop()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def run(self) -> None:
        """The loop itself, in the caller's thread, until stop()."""
        while not self.stopping.is_set():
            try:
                self._round()
            except Exception as exc:
                if self.stopping.is_set():
                    return
                if _status(exc) == GONE:
                    if self.on_expired is not None:
                        self.on_expired()
                    continue
                delay = self.backoff.next_delay()
                self.on_error(exc, delay)
                self.stopping.wait(delay)

    def _round(self) -> None:
        from kubernetes.client.exceptions import ApiException

        version = self.relist()
        self.backoff.reset()
        while not self.stopping.is_set():
            for event in self._events(version):
                if self.stopping.is_set():
                    return
                if event.get("type") == "ERROR":
                    raw = event.get("raw_object") or event.get("object") or {}
                    code = raw.get("code", 500) if isinstance(raw, Mapping) else 500
                    reason = raw.get("message", "watch error") if isinstance(raw, Mapping) else "watch error"
                    raise ApiException(status=code, reason=reason)
                version = event_version(event) or version
                self.handle(event)
            if not self.resume:
                return

    def _events(self, version: str) -> Iterator[Mapping[str, Any]]:
        """One watch from `version`: typed events through kubernetes.watch, or with `deserialize`
        False the raw JSON lines read here (the client's own raw mode fails on an ERROR event)."""
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        args = dict(self.watch_args)
        self._watch = watch.Watch()
        if args.pop("deserialize", True):
            yield from self._watch.stream(self.watch_call, resource_version=version, **args)
            return
        response = self.watch_call(watch=True, resource_version=version, _preload_content=False, **args)
        try:
            if not 200 <= response.status <= 299:
                raise ApiException(status=response.status, reason=response.reason)
            for line in watch.watch.iter_resp_lines(response):
                if line.strip():
                    yield json.loads(line)
                if self.stopping.is_set():
                    return
        finally:
            response.close()
            response.release_conn()
