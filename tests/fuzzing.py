"""A seeded fuzzer for the gateway: hostile requests for every method, sent as raw bytes over a
real gRPC channel (shared by tests/test_fuzz.py and benchmarks/fuzz.py).

Four kinds of request, in turn: structured (well-formed protobuf with hostile values: over-limit
and boundary sizes, control and bidi characters, odd dates, extreme numbers, unknown enums),
invalid UTF-8 spliced into one string field, a truncated encoding, and random bytes. Every
fuzzed paper breaks at least one rule, so an index must be unchanged afterwards; deleted ids
are random and never those of the papers a run keeps.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import grpc

from papersearch.api.v1 import papersearch_pb2 as pb
from papersearch.corpus.paper import Paper

SEARCH, INDEX = "/papersearch.v1.SearchService/", "/papersearch.v1.IndexService/"
METHODS = ("Search", "SimilarPapers", "GetPaper", "UpsertPapers", "DeletePapers",
           "WatchSearch")
KINDS = ("structured", "bad_utf8", "truncated", "random")
# Papers a fuzzed index holds: a normal search must still find them, unchanged, afterwards.
KEPT = [Paper(id=f"kept-{i}", title=f"Kept paper {i} on graph neural networks",
              abstract="Message passing networks for molecules and proteins.") for i in range(3)]
BAD_STATUS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
MARK = "\u2603"  # replaced by invalid UTF-8 bytes after serialisation
HOSTILE_TEXT = [
    "", " ", "\x00", "a\x00b", "\u202eevil", "\u200b", "\x1b[31m", "\ud7ff", "\U0001f680" * 50,
    "e\u0301", "\u00e9", "%s%n", "' OR 1=1 --", "../../etc/passwd", "\t\n\r", "x" * 256,
    "x" * 257, "x" * 1000, "x" * 1001, "x" * 2048, "x" * 2049, "a b " * 6000,
]
HOSTILE_DATES = ["", "0001-01-01", "9999-12-31", "0000-00-00", "2024-02-30", "10000-01-01",
                 "-1", "2024-1-1", "yesterday", "9999-12-31T23:59:59", "\x00"]
HOSTILE_INTS = [0, -1, 1, 100, 101, 2**31 - 1, -(2**31)]
HOSTILE_FLOATS = [float("nan"), float("inf"), -float("inf"), -1.0, 1.0, 1.0000001, 0.25, 1e308]
WATCH_S = 0.3  # a valid watch stays open: the fuzzer reads it this long (DEADLINE_EXCEEDED)
# Rules a fuzzed paper breaks, so that none of them can be written. The id comes first on the
# wire: a truncated encoding can lose any later field, so truncated papers break the id.
def _blank_text(paper: pb.Paper) -> None:
    paper.title = ""
    paper.abstract = ""


ID_BREAKERS: list[Callable[[pb.Paper, random.Random], None]] = [
    lambda p, r: setattr(p, "paper_id", ""),
    lambda p, r: setattr(p, "paper_id", "i" * r.randint(257, 5000)),
    lambda p, r: setattr(p, "paper_id", "id\x00" + r.choice(HOSTILE_TEXT)),
    lambda p, r: setattr(p, "paper_id", "\u202e" + str(r.random())),
]
PAPER_BREAKERS: list[Callable[[pb.Paper, random.Random], None]] = [
    *ID_BREAKERS,
    lambda p, r: _blank_text(p),
    lambda p, r: setattr(p, "title", "t" * r.randint(1001, 5000)),
    lambda p, r: setattr(p, "abstract", "a" * r.randint(20_001, 60_000)),
    lambda p, r: setattr(p, "published", r.choice(HOSTILE_DATES[3:])),
    lambda p, r: p.authors.extend(f"author {i}" for i in range(r.randint(101, 400))),
    lambda p, r: p.categories.extend(["c" * r.randint(257, 1000)]),  # a control one: cleaned
    lambda p, r: setattr(p, "url", "u" * r.randint(2049, 9000)),
]


@dataclass(slots=True)
class FuzzReport:
    sent: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    by_method: dict[str, Counter[str]] = field(default_factory=dict)
    bad: list[str] = field(default_factory=list)  # INTERNAL/UNKNOWN: method, kind, details

    def record(self, method: str, kind: str, code: grpc.StatusCode, details: str) -> None:
        self.sent += 1
        self.codes[code.name] += 1
        self.by_method.setdefault(method, Counter())[code.name] += 1
        if code in BAD_STATUS:
            self.bad.append(f"{method} {kind} {code.name}: {details[:200]}")

    def to_dict(self) -> dict[str, Any]:
        return {"sent": self.sent, "codes": dict(self.codes),
                "by_method": {m: dict(c) for m, c in self.by_method.items()},
                "internal_or_unknown": len(self.bad), "examples": self.bad[:20]}


def _text(rng: random.Random) -> str:
    if rng.random() < 0.7:
        return rng.choice(HOSTILE_TEXT)
    raw = "".join(chr(rng.randint(0, 0x10FFFF)) for _ in range(rng.randint(0, 40)))
    return raw.encode("utf-8", "replace").decode("utf-8")  # lone surrogates: "?"


def _filter(rng: random.Random) -> pb.Filter:
    flt = pb.Filter(published_from=rng.choice(HOSTILE_DATES),
                    published_to=rng.choice(HOSTILE_DATES))
    flt.categories.extend(_text(rng) for _ in range(rng.choice([0, 1, 100, 101, 500])))
    flt.authors.extend(_text(rng) for _ in range(rng.choice([0, 2, 101])))
    return flt


def _structured(method: str, rng: random.Random, truncated: bool = False) -> list[Any]:
    if method == "Search":
        request = pb.SearchRequest(query=_text(rng), top_k=rng.choice(HOSTILE_INTS),
                                   mode=rng.choice([0, 1, 2, 3, 4, -1, 99]),  # type: ignore[arg-type]
                                   explain=rng.random() < 0.3)
        if rng.random() < 0.3:
            request.feedback = rng.random() < 0.5
        if rng.random() < 0.5:
            request.filter.CopyFrom(_filter(rng))
        return [request]
    if method == "SimilarPapers":
        similar = pb.SimilarPapersRequest(paper_id=_text(rng), top_k=rng.choice(HOSTILE_INTS),
                                          filter=_filter(rng),
                                          strategy=rng.choice([0, 1, 2, 3, 4, -1, 99]))  # type: ignore[arg-type]
        if rng.random() < 0.5:  # recommendations: lists of ids, some repeated, some hostile
            similar.positive_ids.extend(_text(rng) for _ in range(rng.choice([1, 3, 20])))
            similar.negative_ids.extend(_text(rng) for _ in range(rng.choice([0, 2, 17])))
        return [similar]
    if method == "GetPaper":
        return [pb.GetPaperRequest(paper_id=_text(rng))]
    if method == "WatchSearch":
        watch = pb.WatchSearchRequest(query=_text(rng), replay_since=rng.choice(HOSTILE_DATES),
                                      replay_limit=rng.choice(HOSTILE_INTS))
        if rng.random() < 0.5:
            watch.min_relevance = rng.choice(HOSTILE_FLOATS)
        if rng.random() < 0.5:
            watch.filter.CopyFrom(_filter(rng))
        return [watch]
    if method == "DeletePapers":
        ids = [f"fuzz-absent-{rng.random()}" for _ in range(rng.choice([0, 1, 3]))]
        return [pb.DeletePapersRequest(paper_ids=ids + [_text(rng)] * rng.choice([0, 1]))]
    papers = []
    for _ in range(rng.randint(1, 3)):
        paper = pb.Paper(paper_id=f"fuzz-{rng.random()}", title=_text(rng), abstract=_text(rng),
                         published=rng.choice(HOSTILE_DATES), url=_text(rng))
        paper.authors.extend(_text(rng) for _ in range(rng.randint(0, 3)))
        rng.choice(ID_BREAKERS if truncated else PAPER_BREAKERS)(paper, rng)
        papers.append(paper)
    return papers


def _string_setters(message: Any) -> list[Callable[[], None]]:
    """For each string field (nested ones too), a function that puts MARK into it."""
    setters: list[Callable[[], None]] = []
    for descriptor in message.DESCRIPTOR.fields:
        if descriptor.type == descriptor.TYPE_STRING and descriptor.is_repeated:
            values = getattr(message, descriptor.name)
            setters.append(partial(values.append, MARK))
        elif descriptor.type == descriptor.TYPE_STRING:
            setters.append(partial(setattr, message, descriptor.name, MARK))
        elif descriptor.type == descriptor.TYPE_MESSAGE and not descriptor.is_repeated:
            setters.extend(_string_setters(getattr(message, descriptor.name)))
    return setters


def _bad_utf8(messages: list[Any], rng: random.Random) -> list[bytes]:
    """One string field of one message holds invalid UTF-8."""
    rng.choice(_string_setters(rng.choice(messages)))()
    invalid = rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80"])
    return [m.SerializeToString().replace(MARK.encode(), invalid) for m in messages]


def requests(seed: int, count: int) -> Iterator[tuple[str, str, list[bytes]]]:
    """(method, kind, messages as bytes): ``count`` requests, methods and kinds in turn."""
    rng = random.Random(seed)
    for i in range(count):
        method, kind = METHODS[i % len(METHODS)], KINDS[(i // len(METHODS)) % len(KINDS)]
        messages = _structured(method, rng, truncated=kind == "truncated")
        if kind == "structured":
            payloads = [m.SerializeToString() for m in messages]
        elif kind == "bad_utf8":
            payloads = _bad_utf8(messages, rng)
        elif kind == "truncated":
            payloads = [m.SerializeToString() for m in messages]
            last = payloads[-1]
            payloads[-1] = last[: rng.randint(0, max(0, len(last) - 1))]
        else:
            payloads = [rng.randbytes(rng.randint(1, 300)) for _ in messages]
        yield method, kind, payloads


def send(channel: grpc.Channel, method: str, payloads: list[bytes],
         timeout_s: float) -> tuple[grpc.StatusCode, str]:
    """One raw request; the status code and details it got."""
    path = (INDEX if method in ("UpsertPapers", "DeletePapers") else SEARCH) + method
    try:
        if method == "UpsertPapers":
            channel.stream_unary(path)(iter(payloads), timeout=timeout_s)
        elif method == "WatchSearch":
            list(channel.unary_stream(path)(payloads[0], timeout=min(timeout_s, WATCH_S)))
        else:
            channel.unary_unary(path)(payloads[0], timeout=timeout_s)
    except grpc.RpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


def fuzz(target: str, seed: int, count: int, timeout_s: float = 30.0) -> FuzzReport:
    report = FuzzReport()
    with grpc.insecure_channel(target) as channel:
        for method, kind, payloads in requests(seed, count):
            code, details = send(channel, method, payloads, timeout_s)
            report.record(method, kind, code, details)
    return report
