"""A real MariaDB server for the tests (Debian's mariadb-server, started on a free loopback port)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from devstack import processes


def mariadb_binaries() -> tuple[str, str] | None:
    server = shutil.which("mariadbd") or next(
        (p for p in ("/usr/sbin/mariadbd", "/usr/sbin/mysqld") if Path(p).exists()), None
    )
    install = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
    return (server, install) if server and install else None


def start_mariadb(tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    binaries = mariadb_binaries()
    if binaries is None:
        if os.environ.get("CI"):
            raise RuntimeError("CI must provide MariaDB: apt-get install -y mariadb-server")
        pytest.skip("MariaDB is not installed here (apt-get install -y mariadb-server); CI runs these")
    server, install = binaries
    datadir = tmp / "mariadb"
    subprocess.run(
        [
            install,
            "--no-defaults",
            f"--datadir={datadir}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--user=root",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    port = processes.free_port()
    proc = processes.start(
        [
            server,
            "--no-defaults",
            f"--datadir={datadir}",
            f"--port={port}",
            "--bind-address=127.0.0.1",
            f"--socket={tmp / 'mariadb.sock'}",
            "--user=root",
            "--skip-log-bin",
            "--innodb-flush-log-at-trx-commit=2",
            "--max-connections=500",
        ],
        tmp / "mariadb.log",
    )
    processes.wait_for_port(port, proc, timeout=60)
    time.sleep(0.5)
    return proc, port


def create_database(port: int, name: str) -> str:
    import pymysql

    conn = pymysql.connect(host="127.0.0.1", port=port, user="root", password="", autocommit=True)
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    conn.close()
    return f"mysql+aiomysql://root:@127.0.0.1:{port}/{name}"


def start_redis(tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    server = shutil.which("redis-server")
    if server is None:
        if os.environ.get("CI"):
            raise RuntimeError("CI must provide Redis: apt-get install -y redis-server")
        pytest.skip("Redis is not installed here (apt-get install -y redis-server); CI runs these")
    port = processes.free_port()
    proc = processes.start(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp),
        ],
        tmp / "redis.log",
    )
    processes.wait_for_port(port, proc, timeout=30)
    return proc, port
