"""The gRPC request metric's status code for calls that end by cancellation."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import grpc
import pytest

from papersearch.gateway.gate import DrainGate
from papersearch.gateway.instrument import _measured
from papersearch.telemetry import Metrics


class Context:
    def __init__(self, remaining_s: float | None) -> None:
        self.remaining_s = remaining_s

    def time_remaining(self) -> float | None:
        return self.remaining_s

    def code(self) -> grpc.StatusCode | None:
        return None


async def cancelled(request: Any, context: Any) -> Any:
    raise asyncio.CancelledError


@pytest.mark.parametrize(("remaining_s", "cutting", "code"), [
    (None, False, "CANCELLED"),  # the client left
    (0.01, False, "DEADLINE_EXCEEDED"),  # gRPC cancels a call at its deadline
    (None, True, "UNAVAILABLE"),  # the drain's grace is over: the server stopped it
    (0.01, True, "UNAVAILABLE"),
])
def test_a_cancelled_call_counts_as_what_its_caller_got(
    monkeypatch: pytest.MonkeyPatch, remaining_s: float | None, cutting: bool, code: str,
) -> None:
    """The calls still running when a drain's grace ended (mostly UpsertPapers streams) were
    counted CANCELLED, as if their callers had gone; they got UNAVAILABLE."""
    recorded: list[str] = []
    monkeypatch.setattr(Metrics, "request",
                        lambda self, method, code, latency_s: recorded.append(code))

    async def go() -> None:
        gate = DrainGate()
        gate.cutting = cutting
        await _measured("Search", cancelled, gate)(None, cast(Any, Context(remaining_s)))

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(go())
    assert recorded == [code]
