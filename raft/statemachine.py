"""The interface between the Raft runtime and the application it replicates."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["StateMachine"]


@runtime_checkable
class StateMachine(Protocol):
    """The replicated application, driven by :class:`raft.runtime.RaftNode`.

    The runtime calls every method from its trio thread, one call at a time,
    so an implementation needs no locking; a call must not block for long
    (it stalls the node's event loop).

    Determinism is the whole contract: every replica applies the same
    commands in the same order and must reach the same state, so ``apply``
    may depend only on the current state, ``index`` and ``command`` (no
    clocks, randomness, environment or I/O that can differ between nodes).
    """

    def apply(self, index: int, command: bytes, /) -> object:
        """Apply the committed command at log ``index``; the return value goes
        to whoever proposed it (only on the node that proposed it).

        Indexes increase strictly but are not contiguous: no-ops and membership
        changes occupy log indexes the state machine never sees.  A command the
        application rejects should produce an error *value*: an exception here
        stops the node (:class:`raft.errors.StateMachineFailed`), because
        skipping an entry on one replica would make it diverge.
        """
        ...

    def query(self, query: bytes, /) -> object:
        """Answer a read-only query against the current state.  Must not change
        state.  An exception is passed to the reader and does not stop the node."""
        ...

    def snapshot(self) -> bytes:
        """The whole state as bytes, reflecting every command applied so far."""
        ...

    def restore(self, index: int, data: bytes, /) -> None:
        """Replace the whole state with a :meth:`snapshot` taken (on some replica)
        once everything through log ``index`` was applied."""
        ...
