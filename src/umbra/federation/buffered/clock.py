"""The virtual clock of buffered asynchronous aggregation (pure state, no Flower).

Every client is always busy: it trains on the model version it was last given and finishes
``duration`` virtual seconds after it started (`umbra.federation.buffered.speeds`). The
server takes finished updates in virtual-time order (ties by partition id) until a buffer
holds ``K``; the buffer is released at the finish time of its last update, and its clients
then start again on the new model. An update more than ``max_staleness`` versions old is
discarded on arrival and its client restarts at once on the current model.

Only the order of events is simulated: the clock says which ``K`` updates fill the next
buffer, from which model version each started, and when the buffer is released. The
training itself runs when the buffer is aggregated, on the version it started from, so it
produces the same update it would have produced at its start.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["Buffer", "Task", "VirtualClock"]


@dataclass(frozen=True, order=True)
class Task:
    """One client's local training in flight: finishes at ``finish`` (virtual seconds),
    started from model ``version``."""

    finish: float
    client: int
    version: int = field(compare=False)
    start: float = field(compare=False)


@dataclass(frozen=True)
class Buffer:
    """The next buffer: its updates (in arrival order), the model version they are
    aggregated into, when it is released and how many stale updates were discarded."""

    tasks: tuple[Task, ...]
    version: int
    released_at: float
    discarded: int

    def staleness(self) -> dict[int, int]:
        """client -> τ = versions between its start model and the buffer's."""
        return {t.client: self.version - t.version for t in self.tasks}


class VirtualClock:
    """In-flight tasks of every client, started at virtual time 0 on version 0.

    Args:
        durations: client -> compute time of one local training (> 0, virtual seconds).
        max_staleness: an update older than this many versions is discarded (> 0).
    """

    def __init__(self, durations: Mapping[int, float], *, max_staleness: int) -> None:
        if not durations:
            raise ValueError("the clock needs at least one client")
        if any(not d > 0 for d in durations.values()):
            raise ValueError("every client's duration must be > 0")
        if max_staleness <= 0:
            raise ValueError(f"max_staleness must be > 0, got {max_staleness}")
        self.durations = dict(durations)
        self.max_staleness = max_staleness
        self.version = 0
        self.now = 0.0
        self._tasks: list[Task] = []
        self.start(self.durations, version=0, at=0.0)

    def start(self, clients: Iterable[int], *, version: int, at: float) -> None:
        """``clients`` start training on model ``version`` at virtual time ``at``."""
        for c in clients:
            heapq.heappush(self._tasks, Task(at + self.durations[c], c, version, at))

    def next_buffer(self, size: int) -> Buffer:
        """Take the next ``size`` updates (discarding the too stale ones) as a buffer of the
        current version; its clients are out of the clock until `release` restarts them."""
        if not 1 <= size <= len(self.durations):
            raise ValueError(f"buffer size must be in [1, {len(self.durations)}], got {size}")
        taken: list[Task] = []
        discarded = 0
        while len(taken) < size:
            task = heapq.heappop(self._tasks)
            if self.version - task.version > self.max_staleness:
                discarded += 1  # arrives too stale: restart on the current model
                self.start([task.client], version=self.version, at=task.finish)
                continue
            taken.append(task)
        released = max(self.now, taken[-1].finish)
        return Buffer(tuple(taken), self.version, released, discarded)

    def release(self, buffer: Buffer) -> None:
        """The buffer's model update is out: the version advances and its clients restart on
        it at the release time."""
        self.version = buffer.version + 1
        self.now = buffer.released_at
        self.start([t.client for t in buffer.tasks], version=self.version, at=self.now)

    def versions_in_use(self) -> set[int]:
        """The model versions some in-flight task started from (older ones can be freed)."""
        return {t.version for t in self._tasks}
