from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.stack import Harness, Stack, new_sqlite_db, running_harness, start_stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("stack"))
    try:
        yield s
    finally:
        s.stop_all()


@pytest.fixture(scope="session")
def db_url(stack: Stack) -> str:
    return new_sqlite_db(stack.tmp)


@pytest.fixture
async def harness(stack: Stack, db_url: str) -> AsyncIterator[Harness]:
    async with running_harness(stack, db_url) as h:
        yield h


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path
