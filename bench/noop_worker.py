"""The ceiling's worker, in a process of its own (its CPU is measured from /proc like the engine's).

    .venv/bin/python -m bench.noop_worker --address 127.0.0.1:7233 --task-queue bench-ceiling-x

Serves `bench.noop_workflow.NoopWithdrawalWorkflow` and its no-op activities on the task queue with
the same Worker limits as `worker.build_workers` (`WORKER_LIMITS`, `WAIT_WORKER_LIMITS`; the in-step
test compares the two processes' workers' configurations), the waits on the waits queue as the
engine's. Prints one line `ready <pid>` on stdout once it polls, and stops on SIGTERM, SIGINT or when
its stdin closes (so a bench that dies does not leave it running).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from temporalio.client import Client  # noqa: E402
from temporalio.worker import Worker  # noqa: E402

from bench.noop_workflow import NOOP_ACTIVITIES, NoopWithdrawalWorkflow  # noqa: E402
from gc_setup import freeze_startup_heap  # noqa: E402
from models.domain import waits_queue  # noqa: E402
from settings import Settings  # noqa: E402
from worker import wait_worker_limits, worker_limits  # noqa: E402

# As worker.py build_workers: the same slots and cache, from the same settings (WE_WORKER_*).
WORKER_LIMITS: dict[str, Any] = worker_limits(Settings())
WAIT_WORKER_LIMITS: dict[str, Any] = wait_worker_limits(Settings())


def build_noop_workers(client: Client, task_queue: str) -> list[Worker]:
    """As the engine's: the workflows and short steps on `task_queue`, the waits on its waits queue."""
    return [
        Worker(
            client,
            task_queue=task_queue,
            workflows=[NoopWithdrawalWorkflow],
            activities=NOOP_ACTIVITIES,
            **WORKER_LIMITS,
        ),
        Worker(client, task_queue=waits_queue(task_queue), activities=NOOP_ACTIVITIES, **WAIT_WORKER_LIMITS),
    ]


async def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--address", required=True)
    p.add_argument("--namespace", default="default")
    p.add_argument("--task-queue", required=True)
    args = p.parse_args(argv)
    client = await Client.connect(args.address, namespace=args.namespace)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def watch_stdin() -> None:
        sys.stdin.read()  # returns at EOF: the bench is gone or done
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_stdin, daemon=True).start()
    main_worker, wait_worker = build_noop_workers(client, args.task_queue)
    freeze_startup_heap()  # as the engine's worker
    async with main_worker, wait_worker:
        sys.stdout.write(f"ready {os.getpid()}\n")
        sys.stdout.flush()
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
