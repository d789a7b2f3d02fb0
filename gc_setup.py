"""Garbage-collector settings for the long-running processes (the worker, the API).

A worker holds a large heap that never dies: the imported modules (web3, SQLAlchemy, the Temporal
SDK), the compiled statements, the cached workflows. CPython's full collection walks all of it: with
the default thresholds one ran every ~10 s under load and cost ~0.2-0.3 s of CPU each (3.4 % of the
worker's CPU; 1.2 % with this, docs/benchmarks.md, 2026-12-02). `freeze_startup_heap` moves what
exists once the process is built into the permanent generation (never scanned again, never freed:
it lives as long as the process anyway), and raises the first generation's threshold so that young
objects, most of which an activity or an activation frees within milliseconds, are collected less
often. Cycles made later are still collected.
"""

from __future__ import annotations

import gc

GEN0_THRESHOLD = 50_000  # CPython's default: 700


def freeze_startup_heap() -> None:
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
