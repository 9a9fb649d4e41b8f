"""JSON values protobuf's JSON parser takes that the HTTP API refuses (gateway/http_api.py).

``json_format.ParseDict`` reads ``true`` as 1 for an enum or a double (``"min_relevance": true``
became a cut-off of 1.0: every hit dropped) and a string or a list as an empty message
(``"filter": ""``). A request body is checked against its message type first, so such a value
is the 400 INVALID_ARGUMENT any other value of the wrong type is.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

_NUMBERS = {FieldDescriptor.TYPE_ENUM: "an enum name or number",
            FieldDescriptor.TYPE_DOUBLE: "a number", FieldDescriptor.TYPE_FLOAT: "a number"}


def check_types(value: dict[str, Any], descriptor: Descriptor, where: str = "") -> None:
    """ValueError naming the first field of ``value`` (a JSON object for ``descriptor``) whose
    value is a boolean where a number or enum is wanted, or not an object where a message is;
    other mistakes are left to protobuf's parser, which names them. A field given under both
    its names (``paper_ids`` and ``paperIds``) is refused: protobuf's ParseDict kept the last
    one given, silently."""
    fields = _fields_by_key(descriptor)
    given: dict[str, str] = {}  # field name -> the key it came as
    for key, item in value.items():
        field = fields.get(key)
        if field is None:
            continue
        name = f"{where}{field.name}"
        if field.name in given:
            raise ValueError(f"{name} is given twice, as {given[field.name]!r} and {key!r}")
        given[field.name] = key
        if item is None:
            continue
        for one in item if field.is_repeated and isinstance(item, list) else [item]:
            message = field.message_type
            if message is not None and not message.GetOptions().map_entry:
                if not isinstance(one, dict):
                    raise ValueError(f"{name} must be a JSON object, got {_kind(one)}")
                check_types(one, message, f"{name}.")
            elif field.type in _NUMBERS and isinstance(one, bool):
                raise ValueError(f"{name} must be {_NUMBERS[field.type]}, got {_kind(one)}")


@cache
def _fields_by_key(descriptor: Descriptor) -> dict[str, FieldDescriptor]:
    """A message's fields by the keys JSON may give them: the proto name and the json_name
    (once per message type, not per request)."""
    return {name: field for field in descriptor.fields for name in (field.name, field.json_name)}


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    return {str: "a string", list: "a list", int: "a number", float: "a number",
            type(None): "null"}[type(value)]
