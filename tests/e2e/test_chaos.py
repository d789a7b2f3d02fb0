"""A short seeded chaos run in the suite (the long one: `python -m tests.e2e.chaos --faults 1000`)."""

from __future__ import annotations

from tests.e2e.chaos import run_chaos
from tests.stack import Stack


async def test_a_seeded_chaos_run_loses_nothing_and_pays_nothing_twice(stack: Stack, db_url: str) -> None:
    report = await run_chaos(stack, db_url, faults=50, seed=20261201, withdrawals=15)
    assert report.withdrawals == 15 and sum(report.faults.values()) == 50, report.line()
    assert report.lost == 0 and report.duplicates == 0, report.line()
    assert report.statuses["CONFIRMED"] >= 10, report.line()  # most get through despite the faults
