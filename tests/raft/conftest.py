"""Fixtures shared by the raft tests."""

from __future__ import annotations

import threading

import pytest

from raft.storage import Storage


class FlushGate:
    """Holds storage flushes (they run in worker threads) until released."""

    def __init__(self) -> None:
        self._open = threading.Event()
        self._open.set()
        self._only: list[Storage] = []

    def hold(self, storage: Storage | None = None) -> None:
        """Hold every flush, or only ``storage``'s."""
        if storage is not None:
            self._only.append(storage)
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def applies_to(self, storage: Storage) -> bool:
        return not self._only or storage in self._only

    def wait(self) -> None:
        self._open.wait()


@pytest.fixture
def flush_gate(monkeypatch: pytest.MonkeyPatch) -> FlushGate:
    gate = FlushGate()
    original_sync = Storage.sync

    def gated_sync(self: Storage) -> None:
        if gate.applies_to(self):
            gate.wait()
        original_sync(self)

    monkeypatch.setattr(Storage, "sync", gated_sync)
    return gate
