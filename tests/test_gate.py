"""The drain gate's refusals and its wait for refused clients to stop calling."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import grpc
import pytest

from papersearch.gateway.gate import REFUSED, DrainGate


class Refused(Exception):
    pass


class Context:
    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Refused(code, details)


async def answer(request: Any, context: Any) -> str:
    return "answered"


async def call(gate: DrainGate) -> str:
    try:
        return str(await gate._gated(answer)(None, cast(Any, Context())))
    except Refused as refused:
        code, details = refused.args
        return f"{code.name}: {details}"


def test_a_closed_gate_refuses_and_waits_for_the_refused_calls_to_stop() -> None:
    async def scenario() -> tuple[list[str], float, float]:
        gate = DrainGate()
        outcomes = [await call(gate)]
        gate.close()
        loop = asyncio.get_running_loop()
        for _ in range(3):  # a refused client's retries
            outcomes.append(await call(gate))
            await asyncio.sleep(0.05)
        last_call = loop.time()
        await gate.wait_quiet(quiet_s=0.2, limit_s=30.0)
        return outcomes, last_call, loop.time()

    outcomes, last_call, quiet_at = asyncio.run(scenario())
    assert outcomes == ["answered"] + [f"UNAVAILABLE: {REFUSED}"] * 3
    assert quiet_at - last_call >= 0.2 - 0.05  # the quiet counts from the last call


@pytest.mark.parametrize("limit_s", [0.3, 0.0])
def test_clients_that_never_stop_calling_hold_the_wait_only_to_its_limit(limit_s: float) -> None:
    async def scenario() -> bool:
        gate = DrainGate()
        gate.close()
        calling = True

        async def call_on() -> None:
            while calling:
                await call(gate)
                await asyncio.sleep(0.02)

        caller = asyncio.create_task(call_on())
        await asyncio.sleep(0.05)
        # the wait ends while the calls go on (the guard: far past the limit)
        await asyncio.wait_for(gate.wait_quiet(quiet_s=1.0, limit_s=limit_s), 20.0)
        still_calling = not caller.done()
        calling = False
        await caller
        return still_calling

    assert asyncio.run(scenario())


def test_a_quiet_spent_stalled_does_not_count() -> None:
    """The loop held up (a loaded machine) through the quiet: calls that came meanwhile may be
    waiting to reach the gate, so the quiet starts again once the loop runs."""
    async def scenario() -> tuple[float, float]:
        gate = DrainGate()
        gate.close()
        await call(gate)
        loop = asyncio.get_running_loop()
        stall = loop.call_later(0.05, time.sleep, 0.5)  # blocks the loop past the quiet
        await gate.wait_quiet(quiet_s=0.2, limit_s=30.0)
        stall.cancel()
        return loop.time(), gate._last_call

    quiet_at, last_call = asyncio.run(scenario())
    assert quiet_at - last_call >= 0.5 + 0.2 - 0.05  # the stall, then a quiet of its own
