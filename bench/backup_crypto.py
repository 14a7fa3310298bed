"""Backup crypto figures: format vs raw AEAD, vs openssl, peak RSS, OPAQUE server cost.

1. Throughput. One deterministic stream (an AES-CTR keystream, generated block by block,
   never stored whole) goes through our Encryptor and Decryptor and through AES-256-GCM
   called in a tight loop on the very same chunks, block by block, the order of the
   contenders alternating per block so that cache state and neighbours' load fall on
   all alike. The raw loop is measured twice: with the one-shot API (``encrypt`` /
   ``decrypt``, returning new bytes), which is "the raw AEAD", and with ``*_into`` into a
   reused buffer, the fastest way cryptography offers. ``format_vs_raw_ratio`` is the
   lower of the encrypt and decrypt ratios against the one-shot loop.
2. ``openssl speed -evp aes-256-gcm -bytes <chunk size>`` (system OpenSSL), encrypt and
   ``-decrypt``; ``vs_openssl_ratio`` is our encrypt throughput over openssl's.
3. Peak RSS of a child process that backs up a 2 GiB file, and of one that restores it
   (each child reports its own ``ru_maxrss``), against a child that only imports.
4. Server CPU per OPAQUE login (generate_ke2 + server_finish), thread CPU time, median
   over many logins. The client side uses the identity KSF so that every login can finish
   with a real KE3; the server never runs the KSF, so its cost is the same under any
   profile.

Prints a table, then one JSON line with every figure.

    .venv/bin/python bench/backup_crypto.py [--size 1GiB] [--rss-size 2GiB]
        [--chunk-size 64KiB] [--block 1MiB] [--logins 400] [--tmpdir DIR] [--skip-rss]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from client.backup_format import DEFAULT_CHUNK_SIZE, Decryptor, Encryptor
from client.backup_io import backup_file, restore
from client.backup_key import BackupKey

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 10**6, "mb": 10**6}
_UNITS |= {"mib": 2**20, "g": 10**9, "gb": 10**9, "gib": 2**30}
_NONCE = struct.Struct(">IQ")
MIB = 2**20
TARGETS = {
    "format_vs_raw_ratio": (">=", 0.85),
    "vs_openssl_ratio": (">=", 1.0),
    "backup_peak_rss_mib": ("<", 100.0),
    "restore_peak_rss_mib": ("<", 100.0),
    "opaque_login_server_us": ("<", 1000.0),
}


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 1GiB, 64KiB, 1000000)")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def keystream(total: int, block: int, seed: int = 1) -> Iterator[bytes]:
    """A deterministic pseudo-random stream of ``total`` bytes, ``block`` bytes at a time."""
    ctr = Cipher(algorithms.AES(bytes([seed]) * 32), modes.CTR(bytes(16))).encryptor()
    zeros = bytes(block)
    left = total
    while left > 0:
        n = min(block, left)
        yield ctr.update(zeros[:n])
        left -= n


# --- 1. throughput ---------------------------------------------------------------------


class _Race:
    """The six contenders, each timed on the same block of the stream (CPU time of this
    thread, so a neighbour preempting us on the shared cores is not counted)."""

    NAMES = ("enc", "raw_enc", "into_enc", "dec", "raw_dec", "into_dec")

    def __init__(self, chunk: int) -> None:
        key = BackupKey(bytes(range(32)))
        self.chunk = chunk
        self.enc = Encryptor(key, rng=os.urandom, chunk_size=chunk)
        self.dec = Decryptor(key)
        self.dec.feed(self.enc.feed(b""))  # the header, outside the timings
        self.raw = AESGCM(os.urandom(32))
        self.aad = bytes(32)
        self.into_ct = bytearray(chunk + 16)
        self.into_pt = bytearray(chunk)
        self.times: dict[str, list[int]] = {name: [] for name in self.NAMES}
        self.index = 0  # chunk index of the current block's first chunk
        self.data = b""
        self.ours_ct = b""
        self.raw_cts: list[bytes] = []

    def block(self, data: bytes, reverse: bool) -> None:
        self.data = data
        encs = [self.ours_enc, self.raw_enc, self.into_enc]
        decs = [self.ours_dec, self.raw_dec, self.into_dec]
        if reverse:
            encs.reverse()
            decs.reverse()
        for step in encs:
            step()
        # The raw loops keep nothing (each result is dropped at once, as in a tight loop);
        # the ciphertexts for the raw decrypt loops are made here, outside the timings.
        raw, aad, chunk, pack, view = self.raw, self.aad, self.chunk, _NONCE.pack, memoryview(data)
        self.raw_cts = [
            raw.encrypt(pack(0, self.index + k), view[p : p + chunk], aad)
            for k, p in enumerate(range(0, len(view), chunk))
        ]
        for step in decs:
            step()
        self.index += len(data) // self.chunk

    def finish(self) -> None:
        self.dec.feed(self.enc.finish())
        self.dec.finish()

    def ours_enc(self) -> None:
        t = time.thread_time_ns()
        out = self.enc.feed(self.data)
        self.times["enc"].append(time.thread_time_ns() - t)
        self.ours_ct = bytes(out)

    def raw_enc(self) -> None:
        raw, aad, chunk, pack = self.raw, self.aad, self.chunk, _NONCE.pack
        view = memoryview(self.data)
        i = self.index
        t = time.thread_time_ns()
        for p in range(0, len(view), chunk):
            raw.encrypt(pack(0, i), view[p : p + chunk], aad)
            i += 1
        self.times["raw_enc"].append(time.thread_time_ns() - t)

    def into_enc(self) -> None:
        raw, aad, chunk, pack, view = (
            self.raw,
            self.aad,
            self.chunk,
            _NONCE.pack,
            memoryview(self.data),
        )
        buf = self.into_ct
        i = self.index
        t = time.thread_time_ns()
        for p in range(0, len(view), chunk):
            raw.encrypt_into(pack(0, i), view[p : p + chunk], aad, buf)
            i += 1
        self.times["into_enc"].append(time.thread_time_ns() - t)

    def ours_dec(self) -> None:
        t = time.thread_time_ns()
        out = self.dec.feed(self.ours_ct)
        self.times["dec"].append(time.thread_time_ns() - t)
        if bytes(out) != self.data:
            raise SystemExit("decrypted stream differs from the plaintext")

    def raw_dec(self) -> None:
        raw, aad, pack = self.raw, self.aad, _NONCE.pack
        i = self.index
        t = time.thread_time_ns()
        for ct in self.raw_cts:
            raw.decrypt(pack(0, i), ct, aad)
            i += 1
        self.times["raw_dec"].append(time.thread_time_ns() - t)

    def into_dec(self) -> None:
        raw, aad, pack, buf = self.raw, self.aad, _NONCE.pack, self.into_pt
        i = self.index
        t = time.thread_time_ns()
        for ct in self.raw_cts:
            raw.decrypt_into(pack(0, i), ct, aad, buf)
            i += 1
        self.times["into_dec"].append(time.thread_time_ns() - t)


def throughput(size: int, chunk: int, block: int) -> dict[str, float]:
    if block % chunk:
        raise SystemExit("--block must be a multiple of --chunk-size")
    race = _Race(chunk)
    done = 0
    for n_block, data in enumerate(keystream(size, block)):
        race.block(data, reverse=bool(n_block % 2))
        done += len(data)
    race.finish()
    times = race.times
    # Sums give the throughput; the per-block medians, which a burst of cache pollution
    # from a neighbour during a few blocks cannot move, are reported beside them.
    gbps = {name: done / sum(ns) for name, ns in times.items()}  # bytes per ns == GB/s
    med = {name: statistics.median(ns) for name, ns in times.items()}
    return {
        "blocks": len(times["enc"]),
        "encrypt_gbps": gbps["enc"],
        "decrypt_gbps": gbps["dec"],
        "raw_encrypt_gbps": gbps["raw_enc"],
        "raw_decrypt_gbps": gbps["raw_dec"],
        "raw_into_encrypt_gbps": gbps["into_enc"],
        "raw_into_decrypt_gbps": gbps["into_dec"],
        "encrypt_format_vs_raw_ratio": gbps["enc"] / gbps["raw_enc"],
        "decrypt_format_vs_raw_ratio": gbps["dec"] / gbps["raw_dec"],
        "encrypt_format_vs_raw_into_ratio": gbps["enc"] / gbps["into_enc"],
        "decrypt_format_vs_raw_into_ratio": gbps["dec"] / gbps["into_dec"],
        "encrypt_format_vs_raw_median_ratio": med["raw_enc"] / med["enc"],
        "decrypt_format_vs_raw_median_ratio": med["raw_dec"] / med["dec"],
    }


# --- 2. openssl speed ------------------------------------------------------------------


def openssl_speed(chunk: int, seconds: int, decrypt: bool) -> float | None:
    """openssl's AES-256-GCM throughput at ``chunk``-byte buffers, in GB/s (None if absent)."""
    exe = shutil.which("openssl")
    if exe is None:
        return None
    cmd = [exe, "speed", "-evp", "aes-256-gcm", "-bytes", str(chunk), "-seconds", str(seconds)]
    if decrypt:
        cmd.append("-decrypt")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        fields = line.split()
        if fields and fields[0].upper() == "AES-256-GCM" and fields[-1].endswith("k"):
            return float(fields[-1][:-1]) * 1000 / 1e9
    raise SystemExit(f"could not parse openssl speed output:\n{out}")


# --- 3. peak RSS -----------------------------------------------------------------------


def child_main(argv: list[str]) -> None:
    """Run in a child process: one backup or restore, then report this process's peak RSS."""
    action = argv[0]
    key = BackupKey(bytes(range(32)))
    start = time.perf_counter()
    if action == "backup":
        backup_file(key, argv[1], argv[2])
    elif action == "restore":
        restore(key, argv[1], argv[2])
    elif action != "idle":
        raise SystemExit(f"unknown child action {action}")
    seconds = time.perf_counter() - start
    print(json.dumps({"maxrss_kib": own_peak_rss_kib(), "seconds": seconds}))


def own_peak_rss_kib() -> int:
    """This process's peak RSS since exec, in KiB.

    ``ru_maxrss`` survives execve on Linux, so a child forked from a big parent would
    report the parent's size; /proc's VmHWM belongs to the new address space only.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run_child(*args: str) -> dict[str, float]:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def peak_rss(size: int, tmpdir: str | None) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="vaultd-bench-", dir=tmpdir) as tmp:
        src = Path(tmp) / "plain.bin"
        backup = Path(tmp) / "plain.vbk"
        restored = Path(tmp) / "restored.bin"
        digest = hashlib.sha256()
        with open(src, "wb") as f:
            for data in keystream(size, 4 * MIB, seed=2):
                f.write(data)
                digest.update(data)
        idle = run_child("idle")
        enc = run_child("backup", str(src), str(backup))
        backup_bytes = backup.stat().st_size
        src.unlink()  # only two 2 GiB files on disk at a time
        dec = run_child("restore", str(backup), str(restored))
        check = hashlib.sha256()
        with open(restored, "rb") as f:
            while data := f.read(4 * MIB):
                check.update(data)
        if check.digest() != digest.digest():
            raise SystemExit("restored file differs from the original")
    return {
        "rss_test_bytes": size,
        "rss_backup_file_bytes": backup_bytes,
        "baseline_rss_mib": idle["maxrss_kib"] / 1024,
        "backup_peak_rss_mib": enc["maxrss_kib"] / 1024,
        "restore_peak_rss_mib": dec["maxrss_kib"] / 1024,
        "backup_file_mbps": size / enc["seconds"] / 1e6,
        "restore_file_mbps": size / dec["seconds"] / 1e6,
    }


# --- 4. OPAQUE server cost -------------------------------------------------------------


def opaque_login(logins: int) -> dict[str, float] | str:
    try:
        from vaultd.crypto import ksf, opaque
    except ImportError as exc:
        return f"vaultd.crypto.opaque not importable: {exc}"
    profile = ksf.IDENTITY
    password = b"correct horse battery staple"
    ident = b"alice"
    setup = opaque.ServerSetup.generate()
    request, blind = opaque.create_registration_request(password)
    response = opaque.create_registration_response(request, setup, ident)
    record, export_key = opaque.finalize_registration_request(
        password, blind, response, profile=profile
    )
    clock = time.thread_time_ns
    ke2_ns: list[int] = []
    finish_ns: list[int] = []
    for i in range(logins + 20):
        ke1, client_state = opaque.generate_ke1(password)
        t0 = clock()
        ke2, server_state = opaque.generate_ke2(
            ke1, record, setup=setup, credential_identifier=ident, profile=profile
        )
        t1 = clock()
        ke3, session_key, login_export_key = opaque.generate_ke3(client_state, ke2, profile=profile)
        t2 = clock()
        server_key = opaque.server_finish(server_state, ke3)
        t3 = clock()
        if server_key != session_key or login_export_key != export_key:
            raise SystemExit("OPAQUE login did not agree on keys")
        if i >= 20:  # the first logins warm caches up
            ke2_ns.append(t1 - t0)
            finish_ns.append(t3 - t2)
    per_login = [a + b for a, b in zip(ke2_ns, finish_ns, strict=True)]
    return {
        "opaque_logins": logins,
        "opaque_login_server_us": statistics.median(per_login) / 1000,
        "opaque_login_server_mean_us": statistics.fmean(per_login) / 1000,
        "opaque_ke2_us": statistics.median(ke2_ns) / 1000,
        "opaque_server_finish_us": statistics.median(finish_ns) / 1000,
    }


# --- report ----------------------------------------------------------------------------


def verdict(name: str, value: float) -> str:
    if name not in TARGETS:
        return ""
    op, bound = TARGETS[name]
    ok = value >= bound if op == ">=" else value < bound
    return f"{op} {bound:g}  {'ok' if ok else 'MISSED'}"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main(sys.argv[2:])
        return
    doc = __doc__ or ""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--size", type=parse_size, default=parse_size("1GiB"))
    p.add_argument("--rss-size", type=parse_size, default=parse_size("2GiB"))
    p.add_argument("--chunk-size", type=parse_size, default=DEFAULT_CHUNK_SIZE)
    p.add_argument("--block", type=parse_size, default=parse_size("1MiB"))
    p.add_argument("--openssl-seconds", type=int, default=3)
    p.add_argument("--logins", type=int, default=400)
    p.add_argument("--tmpdir", default=None, help="where the RSS test's files go")
    p.add_argument("--skip-rss", action="store_true")
    args = p.parse_args()

    figures: dict[str, float | int | str | None] = {
        "size_bytes": args.size,
        "chunk_size": args.chunk_size,
        "block_bytes": args.block,
    }
    figures.update(throughput(args.size, args.chunk_size, args.block))
    figures["format_vs_raw_ratio"] = min(
        float(figures["encrypt_format_vs_raw_ratio"] or 0),
        float(figures["decrypt_format_vs_raw_ratio"] or 0),
    )
    figures["format_vs_raw_into_ratio"] = min(
        float(figures["encrypt_format_vs_raw_into_ratio"] or 0),
        float(figures["decrypt_format_vs_raw_into_ratio"] or 0),
    )
    ossl_enc = openssl_speed(args.chunk_size, args.openssl_seconds, decrypt=False)
    ossl_dec = openssl_speed(args.chunk_size, args.openssl_seconds, decrypt=True)
    figures["openssl_encrypt_gbps"] = ossl_enc
    figures["openssl_decrypt_gbps"] = ossl_dec
    if ossl_enc and ossl_dec:
        figures["vs_openssl_ratio"] = float(figures["encrypt_gbps"] or 0) / ossl_enc
        figures["decrypt_vs_openssl_ratio"] = float(figures["decrypt_gbps"] or 0) / ossl_dec
    if not args.skip_rss:
        figures.update(peak_rss(args.rss_size, args.tmpdir))
    login = opaque_login(args.logins)
    if isinstance(login, str):
        figures["opaque_login_error"] = login
    else:
        figures.update(login)

    rows = [
        ("our encrypt (GB/s)", "encrypt_gbps"),
        ("raw AESGCM.encrypt loop (GB/s)", "raw_encrypt_gbps"),
        ("raw AESGCM.encrypt_into loop (GB/s)", "raw_into_encrypt_gbps"),
        ("our decrypt (GB/s)", "decrypt_gbps"),
        ("raw AESGCM.decrypt loop (GB/s)", "raw_decrypt_gbps"),
        ("raw AESGCM.decrypt_into loop (GB/s)", "raw_into_decrypt_gbps"),
        ("encrypt: format / raw", "encrypt_format_vs_raw_ratio"),
        ("decrypt: format / raw", "decrypt_format_vs_raw_ratio"),
        ("format / raw (lower of the two)", "format_vs_raw_ratio"),
        ("format / raw *_into (lower)", "format_vs_raw_into_ratio"),
        ("openssl speed encrypt (GB/s)", "openssl_encrypt_gbps"),
        ("openssl speed decrypt (GB/s)", "openssl_decrypt_gbps"),
        ("our encrypt / openssl", "vs_openssl_ratio"),
        ("our decrypt / openssl", "decrypt_vs_openssl_ratio"),
        ("RSS of a child that only imports (MiB)", "baseline_rss_mib"),
        ("peak RSS, back up 2 GiB file (MiB)", "backup_peak_rss_mib"),
        ("peak RSS, restore 2 GiB backup (MiB)", "restore_peak_rss_mib"),
        ("file backup, disk to disk (MB/s)", "backup_file_mbps"),
        ("file restore, disk to disk (MB/s)", "restore_file_mbps"),
        ("OPAQUE server CPU per login (us, median)", "opaque_login_server_us"),
        ("  generate_ke2 (us, median)", "opaque_ke2_us"),
        ("  server_finish (us, median)", "opaque_server_finish_us"),
    ]
    size_mib = args.size / MIB
    print(f"backup crypto, {size_mib:g} MiB stream, {args.chunk_size} B chunks")
    print(f"{'figure':<44}{'value':>10}   target")
    for label, name in rows:
        value = figures.get(name)
        if isinstance(value, int | float):
            print(f"{label:<44}{value:>10.3f}   {verdict(name, float(value))}")
    if "opaque_login_error" in figures:
        print(f"OPAQUE login not measured: {figures['opaque_login_error']}")
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
