"""The gateway's request decoding without a server: which string field holds invalid UTF-8."""

from __future__ import annotations

import random

import pytest
from google.protobuf.message import DecodeError

from papersearch.api.v1 import papersearch_pb2 as pb
from papersearch.gateway.decode import describe, invalid_utf8_field

BAD = b"M\xffR\xfe"


def _bad(message: pb.SearchRequest | pb.Paper, mark: str = "MARK") -> bytes:
    return message.SerializeToString().replace(mark.encode(), BAD)


@pytest.mark.parametrize(("message", "field"), [
    (pb.SearchRequest(query="MARK"), "SearchRequest.query"),
    (pb.SearchRequest(query="q", top_k=5, filter=pb.Filter(authors=["a", "b", "MARK"])),
     "SearchRequest.filter.authors[2]"),
    (pb.Paper(paper_id="p", categories=["x", "MARK"], url="MARK2"), "Paper.categories[1]"),
])
def test_names_the_first_string_field_with_invalid_utf8(message: pb.SearchRequest,
                                                        field: str) -> None:
    data = _bad(message)
    with pytest.raises(DecodeError):  # what protobuf itself says names no field
        type(message).FromString(data)
    assert invalid_utf8_field(data, message.DESCRIPTOR) == field
    assert describe(data, message.DESCRIPTOR) == f"{field}: not valid UTF-8"


def test_valid_messages_and_unknown_fields_have_none() -> None:
    data = pb.Paper(paper_id="p\u00e9", title="t", authors=["a"]).SerializeToString()
    assert invalid_utf8_field(data, pb.Paper.DESCRIPTOR) is None
    unknown = b"\x52\x04" + BAD  # field 10, length-delimited: not in Paper, not judged
    assert invalid_utf8_field(data + unknown, pb.Paper.DESCRIPTOR) is None


def test_broken_wire_format_is_the_message_type() -> None:
    data = pb.SearchRequest(query="graphs").SerializeToString()[:-1]
    assert invalid_utf8_field(data, pb.SearchRequest.DESCRIPTOR) is None
    assert describe(data, pb.SearchRequest.DESCRIPTOR) == (
        "request is not a valid papersearch.v1.SearchRequest")


def test_random_bytes_never_raise() -> None:
    rng = random.Random(14)
    valid = pb.SearchRequest(query="q", filter=pb.Filter(authors=["a"])).SerializeToString()
    for _ in range(2000):
        data = bytearray(valid if rng.random() < 0.5 else rng.randbytes(rng.randrange(40)))
        for _ in range(rng.randrange(1, 4)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        assert isinstance(describe(bytes(data), pb.SearchRequest.DESCRIPTOR), str)
    varint_too_long = b"\x0a" + b"\xff" * 12
    assert describe(varint_too_long, pb.SearchRequest.DESCRIPTOR).startswith("request is not")


def test_the_walk_stops_after_a_bounded_number_of_fields() -> None:
    """The walk is Python on the gateway's event loop: a message of a million fields (4 MiB)
    with invalid UTF-8 at its end gets the type's message, not a 1.6 s walk; a bad field
    within a valid request's size (the last of 10,000 ids to delete) is still named."""
    many = pb.DeletePapersRequest(paper_ids=["a"] * 10_000 + ["MARK"])
    assert invalid_utf8_field(_bad(many), pb.DeletePapersRequest.DESCRIPTOR) == \
        "DeletePapersRequest.paper_ids[10000]"
    huge = pb.DeletePapersRequest(paper_ids=["a"] * 1_000_000 + ["MARK"])
    assert describe(_bad(huge), pb.DeletePapersRequest.DESCRIPTOR) == (
        "request is not a valid papersearch.v1.DeletePapersRequest")
