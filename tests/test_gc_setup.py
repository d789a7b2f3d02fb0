"""The worker's and the API's garbage-collector settings (gc_setup)."""

import gc
import weakref
from collections.abc import Iterator

import pytest

from gc_setup import GEN0_THRESHOLD, freeze_startup_heap


@pytest.fixture
def restore_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_the_startup_heap_is_frozen_and_young_objects_collected_less_often(restore_gc: None) -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    _, gen1, gen2 = gc.get_threshold()
    freeze_startup_heap()
    assert gc.get_freeze_count() > 10_000  # this process's modules and objects, never scanned again
    assert gc.get_threshold() == (GEN0_THRESHOLD, gen1, gen2)


def test_a_cycle_made_after_the_freeze_is_still_collected(restore_gc: None) -> None:
    freeze_startup_heap()

    class Node:
        other: object = None

    a, b = Node(), Node()
    a.other, b.other = b, a
    probe = weakref.ref(a)
    del a, b
    gc.collect()
    assert probe() is None
