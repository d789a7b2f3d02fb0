"""Count JSON-RPC calls to a local anvil by watching the loopback interface (`--rpc-sniff`).

The counting proxy (`bench/rpc_proxy.py`) puts a Python process in the path of every RPC call; on a
small machine under load that hop is slow enough to change what it measures (see
docs/benchmarks.md). This reads a copy of the packets instead: a raw AF_PACKET socket on `lo` with a
kernel (classic BPF) filter that keeps only IPv4 TCP segments to the anvil's port, and counts every
`"method": "..."` in their payloads (a batch counts each call). The engine's own packets are not
touched, so the figure is the same with or without it. Linux only, and it needs root or CAP_NET_RAW.

    python -m bench.rpc_sniff --port 8545     # runs until SIGTERM/SIGINT, then prints JSON counts

The bench starts it as a child process right before phase 1 and stops it right after, so the calls
it counts are the ones phase 1 caused (the stack's other networks use other ports).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
METHOD = re.compile(rb'"method"\s*:\s*"([A-Za-z0-9_]+)"')
ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26
PACKET_OUTGOING = 4


def _bpf_tcp_dst_port(port: int) -> list[tuple[int, int, int, int]]:
    """`ip and tcp dst port PORT` on an Ethernet-framed interface (lo is one), unfragmented only."""
    return [
        (0x28, 0, 0, 12),  # ldh [12]            ethertype
        (0x15, 0, 8, 0x0800),  # jeq IPv4, else drop
        (0x30, 0, 0, 23),  # ldb [23]            IP protocol
        (0x15, 0, 6, 6),  # jeq TCP, else drop
        (0x28, 0, 0, 20),  # ldh [20]            flags + fragment offset
        (0x45, 4, 0, 0x1FFF),  # jset fragment, drop
        (0xB1, 0, 0, 14),  # ldxb 4*([14]&0xf)   IP header length
        (0x48, 0, 0, 16),  # ldh [x+16]          TCP destination port
        (0x15, 0, 1, port),  # jeq port, else drop
        (0x06, 0, 0, 0x40000),  # ret: keep the packet
        (0x06, 0, 0, 0),  # ret: drop
    ]


def open_socket(port: int, interface: str = "lo") -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    program = _bpf_tcp_dst_port(port)
    buf = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *ins) for ins in program))
    fprog = struct.pack("HL", len(program), ctypes.addressof(buf))
    s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)  # the kernel copies the program
    s.bind((interface, 0))
    s.settimeout(0.5)
    return s


def payload(frame: bytes) -> bytes:
    ihl = (frame[14] & 0x0F) * 4
    tcp = 14 + ihl
    offset = (frame[tcp + 12] >> 4) * 4
    return frame[tcp + offset :]


def sniff(port: int) -> Counter[str]:
    calls: Counter[str] = Counter()
    stop = False

    def _stop(_sig: int, _frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    s = open_socket(port)
    sys.stderr.write("ready\n")
    sys.stderr.flush()
    while not stop:
        try:
            frame, addr = s.recvfrom(65535)
        except TimeoutError:
            continue
        except InterruptedError:
            continue
        if addr[2] == PACKET_OUTGOING:  # lo delivers each packet twice: as sent and as received
            continue
        for m in METHOD.findall(payload(frame)):
            calls[m.decode()] += 1
    s.close()
    return calls


class SnifferProcess:
    """`python -m bench.rpc_sniff` as a child: started before phase 1, its counts read on stop."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.rpc_sniff", "--port", str(self.port)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline().strip()
        if line != "ready":
            rest = self.proc.stderr.read() if self.proc.poll() is not None else ""
            self.stop()
            raise SystemExit(
                f"error: --rpc-sniff could not watch lo (needs root or CAP_NET_RAW): {line} {rest}"
            )
        time.sleep(0.2)

    def stop(self) -> Counter[str]:
        if self.proc is None:
            return Counter()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        self.proc = None
        with contextlib.suppress(ValueError):
            return Counter(json.loads(out or "{}"))
        return Counter()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Count JSON-RPC calls to a TCP port on lo (see the module doc)")
    ap.add_argument("--port", type=int, required=True)
    a = ap.parse_args()
    try:
        counted = sniff(a.port)
    except OSError as e:
        sys.stderr.write(f"{e}\n")
        sys.exit(2)
    sys.stdout.write(json.dumps(dict(counted)) + "\n")
