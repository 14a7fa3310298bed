"""Speed of the Raft wire codec and of the mTLS transport on loopback.

Run: .venv/bin/python bench/codec_bench.py
Prints a table, then one line of JSON with the figures.  The peer for the
codec is pickle (protocol 5) round-tripping the same Message objects: it
validates nothing, so it is a "speed of light" reference rather than a rival.
"""

from __future__ import annotations

import json
import math
import pickle
import tempfile
import timeit
from pathlib import Path

import trio

from raft.codec import FrameDecoder, decode_payload, encode_frames
from raft.transport import Transport
from raft.types import Entry, EntryKind, Message, MessageType
from vaultd import pki


def append(n_entries: int, size: int, src: int = 1, dst: int = 2) -> Message:
    return Message(
        MessageType.APPEND,
        src=src,
        dst=dst,
        term=7,
        incarnation=0x1234_5678_9ABC,
        index=1_000_000,
        log_term=7,
        entries=[Entry(7, 1_000_001 + i, EntryKind.NORMAL, bytes(size)) for i in range(n_entries)],
        commit=999_999,
    )


def best_us(fn: object, number: int) -> float:
    times = timeit.repeat(fn, number=number, repeat=7)  # type: ignore[arg-type]
    return min(times) / number * 1e6


def codec_figures() -> dict[str, float]:
    out: dict[str, float] = {}
    cases = {
        "append64x100": append(64, 100),
        "heartbeat": Message(MessageType.HEARTBEAT, 1, 2, 7, incarnation=0x1234, commit=99),
    }
    for name, m in cases.items():
        frame = encode_frames([m])[0]
        decoder = FrameDecoder()

        def decode(frame: bytes = frame, decoder: FrameDecoder = decoder) -> None:
            decoder.receive_data(frame)
            payload = decoder.next_payload()
            assert payload is not None
            decode_payload(payload)

        def round_trip(m: Message = m) -> None:
            decode(encode_frames([m])[0])

        def pickled(m: Message = m) -> None:
            pickle.loads(pickle.dumps(m, protocol=5))

        number = 2000 if name.startswith("append") else 50000
        out[f"{name}_encode_us"] = best_us(lambda m=m: encode_frames([m]), number)
        out[f"{name}_decode_us"] = best_us(decode, number)
        out[f"{name}_roundtrip_us"] = best_us(round_trip, number)
        out[f"{name}_pickle_roundtrip_us"] = best_us(pickled, number)
        out[f"{name}_frame_bytes"] = len(frame)
        out[f"{name}_pickle_bytes"] = len(pickle.dumps(m, protocol=5))
        out[f"{name}_vs_pickle_ratio"] = (
            out[f"{name}_pickle_roundtrip_us"] / out[f"{name}_roundtrip_us"]
        )
    return out


async def transport_figures(
    directory: Path, messages: int = 3000, window: int = 64
) -> dict[str, float]:
    """Node 1 streams 64-entry APPENDs to node 2 over mutual TLS on loopback,
    keeping at most ``window`` in flight (so nothing is dropped)."""
    ca = pki.create_ca()
    ctx = {}
    for i in (1, 2):
        d = directory / str(i)
        d.mkdir()
        files = pki.write_tls_files(d, ca.certificate, pki.issue_node_cert(ca, i, ["127.0.0.1"]))
        ctx[i] = (pki.server_ssl_context(files), pki.client_ssl_context(files))
    received = 0
    progress = trio.Event()

    async def on_messages(batch: list[Message]) -> None:
        nonlocal received, progress
        received += len(batch)
        progress.set()
        progress = trio.Event()

    async def ignore(batch: list[Message]) -> None:
        del batch

    t1 = Transport(1, {}, *ctx[1], ignore, peer_identity=pki.node_id_from_der)
    t2 = Transport(2, {}, *ctx[2], on_messages, peer_identity=pki.node_id_from_der)
    template = append(64, 100)
    async with trio.open_nursery() as nursery:
        p1 = await nursery.start(t1.run)
        p2 = await nursery.start(t2.run)
        t1.update_peers({2: ("127.0.0.1", p2)})
        t2.update_peers({1: ("127.0.0.1", p1)})
        t1.send([template])  # connect and warm up
        while received < 1:
            await progress.wait()
        received = 0
        start = trio.current_time()
        sent = 0
        while received < messages:
            if sent - received < window and sent < messages:
                burst = min(window - (sent - received), messages - sent)
                t1.send([template] * burst)
                sent += burst
            await progress.wait()
        elapsed = trio.current_time() - start
        nursery.cancel_scope.cancel()
    assert t1.stats.messages_dropped == 0
    return {
        "transport_appends_per_s": messages / elapsed,
        "transport_entries_per_s": messages * 64 / elapsed,
        "transport_frames_sent": float(t1.stats.frames_sent),
    }


def main() -> None:
    figures = codec_figures()
    with tempfile.TemporaryDirectory() as tmp:
        figures.update(trio.run(transport_figures, Path(tmp)))
    header = ("case", "encode µs", "decode µs", "round µs", "pickle µs", "bytes")
    print(f"{header[0]:<14}" + "".join(f"{h:>11}" for h in header[1:]))
    for name in ("append64x100", "heartbeat"):
        cells = [figures[f"{name}_{k}"] for k in ("encode_us", "decode_us", "roundtrip_us")]
        cells.append(figures[f"{name}_pickle_roundtrip_us"])
        row = "".join(f"{c:>11.2f}" for c in cells)
        print(f"{name:<14}{row}{figures[name + '_frame_bytes']:>11.0f}")
    print(
        f"transport (mTLS on loopback, both ends in one trio thread): "
        f"{figures['transport_appends_per_s']:.0f} APPENDs/s = "
        f"{figures['transport_entries_per_s']:.0f} entries/s "
        f"in {figures['transport_frames_sent']:.0f} frames"
    )
    print(json.dumps({k: round(v, 3) if not math.isnan(v) else None for k, v in figures.items()}))


if __name__ == "__main__":
    main()
