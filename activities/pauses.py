"""The kill switch as the activities apply it: nonce allocation, signing, broadcasting and the
reconciler's nonce fills each ask `held_by_pause` in their own read, so a pause holds everything new
from the moment it commits. The step fails with PAUSED; the workflow waits (its details say why) and
tries again without parking; confirmations of what is already on chain go on.
"""

from __future__ import annotations

from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from models import pauses
from models.domain import ErrorCode
from models.tables import Pause


def describe(p: Pause) -> str:
    scope = (
        f"hot wallet {p.hot_wallet}"
        if p.hot_wallet
        else (f"network {p.network}" if p.network else "every network")
    )
    return f"paused ({scope}) by {p.paused_by}: {p.reason}"


async def held_by_pause(s: AsyncSession, network: str, hot_wallet: str | None) -> ApplicationError | None:
    """PAUSED when a pause covers the wallet: not retried by Temporal (the workflow waits and asks
    again) and expected, so kept out of the SDK's error logs."""
    p = await pauses.covering(s, network, hot_wallet)
    if p is None:
        return None
    return ApplicationError(
        describe(p), type=ErrorCode.PAUSED.value, non_retryable=True, category=ApplicationErrorCategory.BENIGN
    )
