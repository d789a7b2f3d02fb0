"""Committed histories must replay against the current workflow code (regenerate: `make histories`)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from models.domain import Outcome, WithdrawalRequest
from tests.histories import SCENARIOS
from workflows.withdrawal import WithdrawalWorkflow

HISTORIES = sorted((Path(__file__).parents[1] / "histories").glob("*.json"))


def test_every_scenario_has_a_committed_history_of_the_one_current_shape() -> None:
    assert {p.stem for p in HISTORIES} == set(SCENARIOS)


def test_no_workflow_patches_until_the_first_release() -> None:
    source = (Path(__file__).parents[2] / "workflows" / "withdrawal.py").read_text()
    assert "workflow.patched" not in source and "deprecate_patch" not in source


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: p.stem)
async def test_history_replays(path: Path) -> None:
    history = WorkflowHistory.from_json(f"replay-{path.stem}", path.read_text())  # noqa: ASYNC240
    result = await Replayer(workflows=[WithdrawalWorkflow]).replay_workflow(
        history, raise_on_replay_failure=False
    )
    assert result.replay_failure is None, result.replay_failure


@workflow.defn(name="WithdrawalWorkflow")
class _ChangedWithoutPatch(WithdrawalWorkflow):
    """The same workflow with an extra timer before everything: not replay-safe without workflow.patched."""

    @workflow.init
    def __init__(self, req: WithdrawalRequest) -> None:
        super().__init__(req)

    @workflow.run
    async def run(self, req: WithdrawalRequest) -> Outcome:
        await workflow.sleep(timedelta(seconds=1))
        return await super().run(req)


async def test_an_unpatched_change_is_caught_by_replay() -> None:
    path = next(p for p in HISTORIES if p.stem == "native_ethereum_confirmed")
    history = WorkflowHistory.from_json("replay-changed", path.read_text())
    result = await Replayer(workflows=[_ChangedWithoutPatch]).replay_workflow(
        history, raise_on_replay_failure=False
    )
    assert result.replay_failure is not None
