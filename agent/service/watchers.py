"""Whether an extender holds this node's state: node-state watch streams that got their full state.

kube-scheduler tries a pod that an extender refused again only on a cluster event (a Node or Pod
change) or after its unschedulable queue is flushed (5 min). An extender that has just received a
node's first report is no such event, so the agent makes one: the Node condition
`GedgeTopologyReported` turns True once a watch stream has been sent the full state, and False
when the last such stream ends (see `agent.commands.serve`).
"""

from __future__ import annotations

from collections.abc import Callable


class ServedWatches:
    """Counts node-state watch streams whose first event (the full state) was written.

    Listeners get `held` (at least one such stream) when it changes; they run on the caller's thread
    (the gRPC event loop), so they must hand any I/O off.
    """

    def __init__(self) -> None:
        self.streams = 0
        self._listeners: list[Callable[[bool], None]] = []

    @property
    def held(self) -> bool:
        return self.streams > 0

    def add_listener(self, listener: Callable[[bool], None]) -> None:
        self._listeners.append(listener)

    def served(self) -> None:
        """A stream's full state was written."""
        self.streams += 1
        if self.streams == 1:
            self._tell()

    def ended(self) -> None:
        """A stream counted by `served` ended."""
        if self.streams == 0:
            return
        self.streams -= 1
        if self.streams == 0:
            self._tell()

    def _tell(self) -> None:
        for listener in self._listeners:
            listener(self.held)
