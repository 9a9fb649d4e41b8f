"""The Python client's own checks and its watch's lifetime (no gateway needed)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from papersearch.api.convert import WatchQuery
from papersearch.api.v1 import papersearch_pb2 as pb
from papersearch.client import SearchClient, Watching, target_hosts


def test_delete_refuses_a_lone_id() -> None:
    """A str is a Sequence[str]: delete("paper-123") sent one id per character, deleting any
    papers with those one-character ids and keeping the one meant, and looked successful."""
    with SearchClient("127.0.0.1:1") as client, pytest.raises(TypeError, match="list of"):
        client.delete("paper-123")


@pytest.mark.parametrize("timeout_s", [float("inf"), 1e10, 0.0, -1.0, float("nan")])
def test_a_timeout_grpc_cannot_keep_is_refused_before_the_call(timeout_s: float) -> None:
    """gRPC read a deadline past ~7.4e9 s (or inf) as already past: every call failed at once
    with DEADLINE_EXCEEDED, as if the gateway were unreachable."""
    with pytest.raises(ValueError, match="timeout_s must be a positive number of seconds"):
        SearchClient("127.0.0.1:1", timeout_s=timeout_s)
    with SearchClient("127.0.0.1:1") as client:
        with pytest.raises(ValueError, match=r"at most 31536000 \(a year\)"):
            client.health(timeout_s=timeout_s)
        with pytest.raises(ValueError, match="timeout_s must be"):
            client.watch(WatchQuery("graph neural networks"), timeout_s=timeout_s)


@pytest.mark.parametrize(("target", "hosts"), [
    ("gateway:50051", ("gateway",)), ("10.0.0.7:50051", ("10.0.0.7",)),
    ("[::1]:50051", ("::1",)), ("localhost", ("localhost",)),
    ("dns:///gateway.svc:50051", ("gateway.svc",)),
    ("dns://8.8.8.8/gateway.svc:443", ("gateway.svc",)),
    ("ipv4:127.0.0.1:1,10.0.0.2:2", ("127.0.0.1", "10.0.0.2")),  # each: the next when one's down
    ("ipv6:[::1]:50051", ("::1",)), ("unix:/tmp/gateway.sock", ()), ("::1", ("::1",)),
    ("ipv6:::1", ("::1",)), ("DNS:///gateway.svc:50051", ("gateway.svc",)),
])
def test_the_hosts_a_target_names(target: str, hosts: tuple[str, ...]) -> None:
    assert target_hosts(target) == hosts


def test_a_key_sent_in_clear_beyond_this_machine_is_warned_of(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """SearchClient(remote, api_key=...) without TLS sent the key in plaintext, silently."""
    caplog.set_level(logging.WARNING, logger="papersearch.client")
    remote = ("192.0.2.2:50051", "ipv4:127.0.0.1:50051,192.0.2.2:50051")  # a list: its second
    for target in ("127.0.0.1:50051", "localhost:50051", "unix:/tmp/g.sock",
                   "ipv4:127.0.0.1:1,127.0.0.2:2", *remote):
        SearchClient(target).close()  # no key: nothing to say
        SearchClient(target, api_key="a-key").close()
    warned = [record for record in caplog.records if "unencrypted" in record.getMessage()]
    assert tuple(record.__dict__["target"] for record in warned) == remote
    assert all("a-key" not in record.getMessage() for record in caplog.records)


class Call:
    """A WatchSearch call: events until cancelled."""

    def __init__(self) -> None:
        self.cancelled = 0

    def __iter__(self) -> Iterator[pb.WatchEvent]:
        while not self.cancelled:
            yield pb.WatchEvent(caught_up=True)

    def cancel(self) -> None:
        self.cancelled += 1


def test_leaving_a_watch_ends_its_stream() -> None:
    """A loop left with break kept the server's watch open (one of its
    serve.watch_max_watches places) until the call was garbage collected."""
    call = Call()
    for event in Watching(call):
        assert event.caught_up
        break
    assert call.cancelled == 1
    with Watching(call := Call()) as watching:
        events = iter(watching)  # held: its own end would cancel the call too
        next(events)
        assert call.cancelled == 0
    assert call.cancelled == 1
