"""Group commit for trio: many writers, one flush at a time, each flush covering all of them.

A writer appends to the storage (cheap, buffered) and then awaits
:meth:`GroupCommitter.commit`.  At most one flush runs at a time, in a worker
thread.  A writer arriving while a flush runs cannot be covered by it (that
flush may already have taken its buffer), so it waits for the *next* flush,
which starts as soon as the running one ends and covers every writer that
arrived meanwhile.  Under load this turns N writers into about two flushes
instead of N.
"""

from __future__ import annotations

from typing import Protocol

import trio

__all__ = ["GroupCommitter", "Syncable"]


class Syncable(Protocol):
    def sync(self) -> None:
        """Make everything written so far durable (blocking)."""


class GroupCommitter:
    """Shares flushes of one storage among concurrent trio tasks.

    All calls must come from one trio run (the committer keeps trio events).
    """

    def __init__(self, storage: Syncable) -> None:
        self._storage = storage
        self._started = 0  # flushes begun
        self._completed = 0  # highest flush number that finished successfully
        self._running = False
        self._finished = trio.Event()  # set when the running flush ends
        self.flushes = 0  # flushes this committer ran (successful or not)

    async def commit(self) -> None:
        """Return once a flush that began after this call has completed.

        Everything the caller wrote to the storage before calling is then
        durable.  If that flush fails the storage's error (a StorageError)
        propagates to every waiter it was meant to cover.  Cancelling a
        waiter never interrupts a flush under way (the thread runs to its
        end), so other waiters are unaffected.
        """
        target = self._started + 1
        while self._completed < target:
            if self._running:
                await self._finished.wait()
                continue
            await self._flush()

    async def _flush(self) -> None:
        self._running = True
        self._started += 1
        number = self._started
        self.flushes += 1
        ok = False
        try:
            await trio.to_thread.run_sync(self._storage.sync)
            ok = True
        finally:
            if ok:
                self._completed = number
            self._running = False
            done, self._finished = self._finished, trio.Event()
            done.set()
