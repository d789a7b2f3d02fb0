"""Start real processes on loopback: the Temporal dev server, anvil and the API."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from settings import ROOT

SEARCH_ATTRIBUTES = ("WithdrawalStatus", "Network", "Asset", "UserId", "ClientId", "TxHash")
VENV_BIN = ROOT / ".venv" / "bin"


def temporal_bin() -> str:
    for candidate in (VENV_BIN / "temporal", shutil.which("temporal")):
        if candidate and Path(candidate).exists():
            return str(candidate)
    raise FileNotFoundError("temporal CLI not found: install the project (make install)")


def anvil_bin() -> str:
    path = ROOT / "node_modules" / ".bin" / "anvil"
    if path.exists():
        return str(path)
    found = shutil.which("anvil")
    if found:
        return found
    raise FileNotFoundError("anvil not found: run `npm ci` (make install)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def wait_for_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before opening port {port}")
        time.sleep(0.05)
    raise TimeoutError(f"port {port} did not open within {timeout}s")


def api_command(host: str, port: int, python: str = sys.executable) -> list[str]:
    """The API as uvicorn serves it: no `server` header (a version banner only helps an attacker) and
    no access log (the API logs what it needs, never a key)."""
    return [
        python,
        "-m",
        "uvicorn",
        "api.app:create_app",
        "--factory",
        "--host",
        host,
        "--port",
        str(port),
        "--no-access-log",
        "--no-server-header",
    ]


def temporal_command(db_file: Path, port: int, ui_port: int, namespace: str = "default") -> list[str]:
    cmd = [
        temporal_bin(),
        "server",
        "start-dev",
        "--ip",
        "127.0.0.1",
        "--port",
        str(port),
        "--ui-port",
        str(ui_port),
        "--db-filename",
        str(db_file),
        "--namespace",
        namespace,
        "--log-level",
        "warn",
        "--sqlite-pragma",
        "journal_mode=wal",
        "--sqlite-pragma",
        "synchronous=normal",
        "--dynamic-config-value",
        "frontend.enableUpdateWorkflowExecution=true",
        "--dynamic-config-value",
        "frontend.enableExecuteMultiOperation=true",
    ]
    for name in SEARCH_ATTRIBUTES:
        cmd += ["--search-attribute", f"{name}=Keyword"]
    return cmd


def anvil_command(
    port: int,
    chain_id: int,
    *,
    block_time: float = 1.0,
    state_file: Path | None = None,
    hardfork: str | None = None,
) -> list[str]:
    cmd = [
        anvil_bin(),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--chain-id",
        str(chain_id),
        "--block-time",
        str(block_time),
        "--silent",
    ]
    if hardfork:
        cmd += ["--hardfork", hardfork]
    if state_file is not None:
        cmd += ["--state", str(state_file), "--state-interval", "5"]
    return cmd


def start(
    cmd: list[str], log_path: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    merged = {**os.environ, **(env or {})}
    merged.pop("PYTHONDONTWRITEBYTECODE", None)  # the workflow sandbox re-imports modules: keep .pyc files
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=merged, start_new_session=True)


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def rpc(url: str, method: str, params: list[object] | None = None) -> Any:
    body = httpx.post(
        url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}, timeout=30
    ).json()
    if body.get("error"):
        raise RuntimeError(f"{method}: {body['error']}")
    return body.get("result")
