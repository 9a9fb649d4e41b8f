"""A seeded fuzzer for the HTTP/JSON API (tests/test_fuzz.py): the gRPC fuzzer's hostile messages
(tests/fuzzing.py) written as JSON, plus what only JSON can get wrong: a field of the wrong JSON
type, an unknown field, numbers past every integer type, a truncated document and random
bytes. Every answer must be a JSON object, and a failure a 4xx error object, never a 5xx.
"""

from __future__ import annotations

import json
import random
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format

from papersearch.api.openapi import NDJSON
from tests.fuzzing import INDEX, SEARCH
from tests.fuzzing import _structured as structured  # the gRPC fuzzer's hostile messages

METHODS = ("Search", "SimilarPapers", "GetPaper", "UpsertPapers", "DeletePapers",
           "WatchSearch")
WATCH_MS = "1000"  # a valid watch stays open: read this long, its end a DEADLINE_EXCEEDED line
KINDS = ("structured", "wrong_type", "truncated", "random")
# 10**400: past a float's range (protobuf raised OverflowError, a 500); "\ud800": a lone
# surrogate where protobuf looks a name up (SystemError, a 500)
WRONG_VALUES: list[Any] = [None, True, -1, 10**40, 10**400, 1.5e308, "x", [], [[[[[]]]]], {},
                           {"a": 1}, "\u202e", "\ud800", ["\x00"] * 3]


def _path(method: str) -> str:
    return (INDEX if method in ("UpsertPapers", "DeletePapers") else SEARCH) + method


def _wrong_type(document: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    if document and rng.random() < 0.7:
        document[rng.choice(sorted(document))] = rng.choice(WRONG_VALUES)
    else:
        key = rng.choice(["colour", "paperId ", "", "__proto__", "\ud800"])
        document[key] = rng.choice(WRONG_VALUES)
    return document


def requests(seed: int, count: int) -> Iterator[tuple[str, str, bytes]]:
    """(method, kind, body): ``count`` requests, methods and kinds in turn."""
    rng = random.Random(seed)
    for i in range(count):
        method, kind = METHODS[i % len(METHODS)], KINDS[(i // len(METHODS)) % len(KINDS)]
        documents = [json_format.MessageToDict(m, preserving_proto_field_name=True)
                     for m in structured(method, rng)]
        if kind == "wrong_type":
            documents = [_wrong_type(d, rng) for d in documents]
        lines = [json.dumps(d) for d in documents]
        body = "\n".join(lines).encode() if method == "UpsertPapers" else lines[0].encode()
        if kind == "truncated":
            body = body[: rng.randint(0, max(0, len(body) - 1))]
        elif kind == "random":
            body = rng.randbytes(rng.randint(0, 200))
        yield method, kind, body


def _send(base_url: str, method: str, body: bytes, key: str | None) -> tuple[int, Any]:
    content_type = NDJSON if method == "UpsertPapers" else "application/json"
    headers = {"Content-Type": content_type, **({"x-api-key": key} if key else {})}
    if method == "WatchSearch":
        headers["x-timeout-ms"] = WATCH_MS
    request = urllib.request.Request(base_url + _path(method), body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            if method != "WatchSearch":
                return response.status, json.load(response)
            return _watch_answer(response.status, [json.loads(line) for line in response])
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def _watch_answer(status: int, lines: list[Any]) -> tuple[int, Any]:
    """An NDJSON watch: every line an object; the last one's error, if not its deadline, is
    the answer (its code), else the stream's 200."""
    if not lines or not all(isinstance(line, dict) for line in lines):
        return status, lines
    error = lines[-1].get("error")
    if isinstance(error, dict) and error.get("status") != "DEADLINE_EXCEEDED":
        return int(error.get("code", 500)), lines[-1]
    return status, lines[-1]


@dataclass(slots=True)
class HttpFuzzReport:
    """Answers by HTTP status; ``bad``: a 5xx, an answer that is not a JSON object, or a
    failure without the API's error object."""

    sent: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    by_method: dict[str, Counter[str]] = field(default_factory=dict)
    bad: list[str] = field(default_factory=list)

    def add(self, method: str, status: str, example: str, bad: bool) -> None:
        self.sent += 1
        self.statuses[status] += 1
        self.by_method.setdefault(method, Counter())[status] += 1
        if bad:
            self.bad.append(f"{method} {status} {example}")


def fuzz(base_url: str, seed: int, count: int, key: str | None = None) -> HttpFuzzReport:
    report = HttpFuzzReport()
    for method, kind, body in requests(seed, count):
        try:
            status, answer = _send(base_url, method, body, key)
        except (json.JSONDecodeError, urllib.error.URLError) as error:
            report.add(method, str(0), f"{kind}: {error!r}"[:200], bad=True)
            continue
        error = answer.get("error") if isinstance(answer, dict) else None
        bad = (status >= 500 or not isinstance(answer, dict)
               or (status >= 400 and not (isinstance(error, dict) and error.get("message"))))
        report.add(method, str(status), f"{kind}: {answer!r}"[:200], bad=bad)
    return report
