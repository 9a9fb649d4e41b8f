"""The HTTP/JSON API's OpenAPI 3.1 document, generated from the proto (never written by hand).

Paths, schemas and descriptions all come from the compiled descriptors of
``papersearch.api.v1`` and the comments of the .proto copy beside them (api/generate.py puts it
there), so the document follows the proto; only what HTTP does otherwise than gRPC is added to
a description here (HTTP_NOTES). The JSON mapping is protobuf's own
(``google.protobuf.json_format``): proto field names, enum values by name, 64-bit integers as
decimal strings; the gateway writes every field without presence, set or not (an ``optional``
field or a message field only when set: gateway/http_api.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor, MethodDescriptor
from grpc_health.v1 import health_pb2

from papersearch.api.v1 import papersearch_pb2 as pb

PROTO = Path(pb.__file__).with_name("papersearch.proto")
NDJSON = "application/x-ndjson"
API_KEY_HEADER = "x-api-key"
TIMEOUT_HEADER = "x-timeout-ms"
MAX_TIMEOUT_MS = 999_999_999  # nine digits: 11.6 days, far past any cap the gateway sets
# gRPC status -> HTTP status (google.rpc.Code's documented HTTP mapping).
HTTP_STATUS = {
    "OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504, "NOT_FOUND": 404, "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429, "FAILED_PRECONDITION": 400,
    "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501, "INTERNAL": 500,
    "UNAVAILABLE": 503, "DATA_LOSS": 500, "UNAUTHENTICATED": 401,
}

# What differs over HTTP from the proto's comment of a method or message (by full name): its
# text after the proto's. UpsertPapers' body is NDJSON parsed by the gateway, so it never sends
# gRPC a message that is not valid protobuf: a bad line ends the gRPC stream normally instead,
# and what came before it is written (gateway/http_api.py, _Lines).
HTTP_NOTES = {
    "papersearch.v1.IndexService.UpsertPapers": (
        "Over HTTP: the request body is NDJSON, one Paper JSON object per line, blank lines "
        "skipped. A line that is not a valid Paper (not JSON, an unknown field, a value of the "
        "wrong type: 400 INVALID_ARGUMENT; past the size limit: 413; a body that stops "
        "arriving for serve.http_body_timeout_s: 408) ends the stream before it, unlike the "
        "invalid message above: every paper of the lines before it is written, "
        "the unfinished batch too, and the error object carries summary, the UpsertSummary of "
        "those lines (papers skipped as invalid, and why), and metadata "
        "papersearch-committed and papersearch-committed-messages; its message names the line "
        "of the body to resend from (blank lines count). Other failures (the deadline, a "
        "drain, the index) carry metadata as over gRPC, and no summary."),
    "papersearch.v1.UpsertSummary": (
        "Over HTTP, an UpsertPapers whose NDJSON body held a line that is not a valid Paper "
        "also answers one, in its error object's summary: the lines before that line."),
}

_INT32 = {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32,
          FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32}
_INT64 = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64,
          FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64}
_DECLARATION = re.compile(
    r"^\s*(?:(?P<block>service|message|enum)\s+(?P<name>\w+)\s*\{"
    r"|rpc\s+(?P<rpc>\w+)\s*\("
    r"|(?:optional\s+|repeated\s+)?(?:map<[^>]+>|[\w.]+)\s+(?P<field>\w+)\s*=\s*\d+"
    r"|(?P<value>[A-Z][A-Z0-9_]*)\s*=\s*-?\d+)"
)


def http_path(method: MethodDescriptor) -> str:
    """The method's HTTP path: its gRPC path, /papersearch.v1.SearchService/Search."""
    return f"/{method.containing_service.full_name}/{method.name}"


@cache
def comments() -> dict[str, str]:
    """Leading ``//`` comments of the proto's declarations, by full name (papersearch.v1.Filter,
    papersearch.v1.Filter.published_from, papersearch.v1.SearchService.Search)."""
    found: dict[str, str] = {}
    package = pb.DESCRIPTOR.package
    scope: list[str] = []
    pending: list[str] = []
    for line in PROTO.read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if text.startswith("//"):
            pending.append(text[2:].strip())
            continue
        match = _DECLARATION.match(line)
        if match:
            name = next(n for n in match.group("name", "rpc", "field", "value") if n)
            if pending:
                found[".".join([package, *scope, name])] = " ".join(pending)
            if match.group("block"):
                scope.append(name)
        elif text.startswith("}") and scope:
            scope.pop()
        pending = []
    return found


@cache
def conventions() -> str:
    """The proto header's "Conventions:" list as Markdown: the rules every method follows
    (dates, limits, cleaning, statuses and what to retry), which no declaration repeats: the
    document had none of them."""
    header = []
    for line in PROTO.read_text(encoding="utf-8").splitlines():
        if not line.startswith("//"):
            break
        header.append(line[2:].strip())
    items: list[str] = []
    for text in header[header.index("Conventions:") + 1:]:
        if text.startswith("- "):
            items.append(text)
        elif items and text:
            items[-1] += " " + text
    return "\n".join(items)


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of every papersearch service method, and of the HTTP front's
    probes."""
    notes = comments()
    paths: dict[str, Any] = {}
    for service in pb.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            paths[http_path(method)] = {"post": _operation(method, notes)}
    paths |= _http_only_paths()
    methods = [m for s in pb.DESCRIPTOR.services_by_name.values() for m in s.methods]
    answers = (_held(m.output_type for m in methods)  # messages only ever sent back
               - _held(m.input_type for m in methods))
    schemas: dict[str, Any] = {"Error": _ERROR, "HealthStatus": _HEALTH}
    for message in _messages(pb.DESCRIPTOR.message_types_by_name.values()):
        schemas[message.name] = _message_schema(message, notes, message.full_name in answers)
    for enum in pb.DESCRIPTOR.enum_types_by_name.values():
        schemas[enum.name] = _enum_schema(enum, notes)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "papersearch HTTP/JSON API",
            "version": pb.DESCRIPTOR.package.rsplit(".", 1)[-1],
            "description": (
                "The gRPC API of proto/papersearch/v1/papersearch.proto over HTTP: POST the "
                "request message as protobuf JSON to the method's gRPC path. Errors carry the "
                "gRPC status name and message; streams are newline-delimited JSON. Generated "
                "from the proto. The schemas name fields as the proto does (snake_case) and "
                "enum values by name, the form responses use; requests may also use what "
                "protobuf's JSON parser also reads, which these schemas do not list: "
                "lowerCamelCase names, enum numbers, numbers written as strings (\"3\"), "
                "and null for a field left unset.\n\nConventions:\n" + conventions()),
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header",
                                           "name": API_KEY_HEADER}},
            "parameters": {"timeout": {
                "name": TIMEOUT_HEADER, "in": "header", "required": False,
                "description": "The call's deadline in milliseconds, counted from the "
                               "request's arrival (its body's transfer included, as a gRPC "
                               "deadline). Without it: a search "
                               "gets serve.default_deadline_s, an IndexService call "
                               "serve.index_call_timeout_s, WatchSearch none. Searches are "
                               "capped at serve.max_deadline_s and IndexService calls at "
                               "serve.index_call_timeout_s; WatchSearch is not capped.",
                "schema": {"type": "integer", "minimum": 1, "maximum": MAX_TIMEOUT_MS}}},
        },
        "security": [{}, {"apiKey": []}],
    }


_ERROR = {
    "type": "object",
    "description": "A failed call: the HTTP status follows the gRPC status (google.rpc.Code).",
    "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["code", "status", "message"],
                             "properties": {
                                 "code": {"type": "integer", "description": "HTTP status."},
                                 "status": {"type": "string", "enum": sorted(
                                     s for s in HTTP_STATUS if s != "OK")},
                                 "message": {"type": "string"},
                                 "metadata": {"type": "object",
                                              "additionalProperties": {"type": "string"},
                                              "description": "The call's trailing metadata "
                                                             "(e.g. papersearch-committed)."},
                                 "summary": {"$ref": "#/components/schemas/UpsertSummary",
                                             "description": "UpsertPapers cut short by a bad "
                                                            "NDJSON line: the UpsertSummary of "
                                                            "the lines before it."}}}},
}


_HEALTH = {
    "type": "object",
    "description": "The gateway's gRPC health status of one service (grpc.health.v1).",
    "required": ["status"],
    "properties": {"status": {"type": "string", "enum": list(
        health_pb2.HealthCheckResponse.ServingStatus.keys())}},
    "additionalProperties": False,
}
# Sent with every 429 and 503 (gateway/http_api.py: HTTP clients' retry policies read it), and
# with a 405 the methods the path takes.
_HEADERS = {
    "Retry-After": {"description": "Seconds to wait before sending the call again.",
                    "schema": {"type": "integer", "minimum": 0}},
    "Allow": {"description": "The methods the path takes.", "schema": {"type": "string"}},
}
_HEADERS_BY_CODE = {429: ["Retry-After"], 503: ["Retry-After"], 405: ["Allow"]}
# A gateway without keys on a loopback address answers only requests for a loopback name
# (gateway/http_api.py: a DNS-rebinding page cannot reach it), on every path.
_NOT_THIS_HOST = {"description": "PERMISSION_DENIED: a Host that is not a loopback name, on a "
                                 "gateway without keys", "content": {"application/json": {
                                     "schema": {"$ref": "#/components/schemas/Error"}}}}


def _http_only_paths() -> dict[str, Any]:
    """What the HTTP front serves besides the methods: probes and this document (the search
    page at / and /page/ is for browsers, not clients, and is left out). No key needed."""
    def probe(what: str) -> dict[str, Any]:
        answer = {"application/json": {"schema": {"$ref": "#/components/schemas/HealthStatus"}}}
        return {"get": {
            "operationId": f"HTTP.{what}", "tags": ["HTTP"], "summary": what,
            "description": f"The gateway's {what.lower()} (its gRPC health service): 200 "
                           "while SERVING, 503 otherwise (UNKNOWN: the check got no answer).",
            "security": [],
            "responses": {"200": {"description": "SERVING", "content": answer},
                          "503": {"description": "NOT_SERVING or UNKNOWN", "content": answer,
                                  "headers": _headers(503)},
                          "403": _NOT_THIS_HOST}}}

    return {
        "/healthz": probe("Liveness"),
        "/readyz": probe("Readiness"),
        "/openapi.json": {"get": {
            "operationId": "HTTP.OpenAPI", "tags": ["HTTP"], "summary": "OpenAPI",
            "description": "This document.", "security": [],
            "responses": {"200": {"description": "The OpenAPI 3.1 document", "content": {
                "application/json": {"schema": {"type": "object"}}}}, "403": _NOT_THIS_HOST}}},
    }


def _headers(code: int) -> dict[str, Any]:
    return {name: _HEADERS[name] for name in _HEADERS_BY_CODE.get(code, [])}


def _error_statuses() -> dict[int, list[str]]:
    """HTTP code -> the statuses an error answer with it may carry: google.rpc.Code's mapping
    (several statuses share a code), and what the HTTP front itself answers before any call
    (a body too slow, too large, of another Content-Type; a method not allowed)."""
    by_code: dict[int, list[str]] = {}
    for status, code in sorted(HTTP_STATUS.items()):
        if code != 200:
            by_code.setdefault(code, []).append(status)
    for code, status in ((405, "UNIMPLEMENTED"), (408, "DEADLINE_EXCEEDED"),
                         (413, "RESOURCE_EXHAUSTED"), (415, "INVALID_ARGUMENT")):
        by_code.setdefault(code, []).append(status)
    return by_code


_ERROR_STATUSES = _error_statuses()


def _operation(method: MethodDescriptor, notes: dict[str, str]) -> dict[str, Any]:
    request = _body(method.input_type, method.client_streaming, "request")
    response = _body(method.output_type, method.server_streaming, "response")
    errors = {str(code): {"description": ", ".join(statuses), "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        **({"headers": _headers(code)} if code in _HEADERS_BY_CODE else {})}
        for code, statuses in sorted(_ERROR_STATUSES.items())}
    return {
        "operationId": f"{method.containing_service.name}.{method.name}",
        "tags": [method.containing_service.name],
        "summary": method.name,
        "description": _described(method.full_name, notes),
        "parameters": [{"$ref": "#/components/parameters/timeout"}],
        "requestBody": {"required": True, "content": request},
        "responses": {"200": {"description": method.output_type.name, "content": response},
                      **errors},
    }


def _described(name: str, notes: dict[str, str]) -> str:
    """The proto's comment of ``name``, then what differs over HTTP (HTTP_NOTES)."""
    return " ".join(filter(None, [notes.get(name, ""), HTTP_NOTES.get(name, "")]))


def _body(message: Descriptor, streaming: bool, what: str) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{message.name}"}
    if not streaming:
        return {"application/json": {"schema": ref}}
    if what == "request":
        return {NDJSON: {"schema": {**ref, "description": f"A stream: one {message.name} JSON "
                                                          "object per line of the request."}}}
    return {NDJSON: {"schema": {
        "oneOf": [ref, {"$ref": "#/components/schemas/Error"}],
        "description": f"A stream: one {message.name} JSON object per line of the response; "
                       "the last line is an Error object when the stream ends with one (a "
                       "drain, the deadline)."}}}


def _messages(messages: Any) -> Iterator[Descriptor]:
    for message in messages:
        if message.GetOptions().map_entry:
            continue
        yield message
        yield from _messages(message.nested_types)


def _held(messages: Iterable[Descriptor]) -> set[str]:
    """The full names of ``messages`` and of every message their fields hold."""
    seen: set[str] = set()
    stack = list(messages)
    while stack:
        message = stack.pop()
        if message.full_name not in seen:
            seen.add(message.full_name)
            stack.extend(f.message_type for f in message.fields if f.message_type is not None)
    return seen


def _message_schema(message: Descriptor, notes: dict[str, str],
                    answer: bool) -> dict[str, Any]:
    """``answer``: a message only ever sent back, whose fields without presence the gateway
    always writes (required for clients generated from the document; a request's are not)."""
    properties = {}
    for field in message.fields:
        schema = _field_schema(field)
        if field.full_name in notes:
            schema = {**schema, "description": notes[field.full_name]}
        properties[field.name] = schema
    required = [f.name for f in message.fields if answer and not f.has_presence]
    return {"type": "object", "description": _described(message.full_name, notes),
            "properties": properties, "additionalProperties": False,
            **({"required": required} if required else {})}


def _field_schema(field: FieldDescriptor) -> dict[str, Any]:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        value = field.message_type.fields_by_name["value"]
        return {"type": "object", "additionalProperties": _scalar_schema(value)}
    item = _scalar_schema(field)
    if field.is_repeated:
        return {"type": "array", "items": item}
    return item


def _scalar_schema(field: FieldDescriptor) -> dict[str, Any]:
    kind = field.type
    if field.message_type is not None:
        return {"$ref": f"#/components/schemas/{field.message_type.name}"}
    if field.enum_type is not None:
        return {"$ref": f"#/components/schemas/{field.enum_type.name}"}
    if kind in _INT32:
        return {"type": "integer", "format": "int32"}
    if kind in _INT64:  # protobuf JSON writes them as strings and reads either
        return {"type": ["string", "integer"], "format": "int64", "pattern": r"^-?\d+$"}
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return {"type": "number"}
    if kind == FieldDescriptor.TYPE_BOOL:
        return {"type": "boolean"}
    if kind == FieldDescriptor.TYPE_BYTES:
        return {"type": "string", "contentEncoding": "base64"}
    return {"type": "string"}


def _enum_schema(enum: EnumDescriptor, notes: dict[str, str]) -> dict[str, Any]:
    values = [v.name for v in enum.values]
    described = "; ".join(f"{v.name}: {notes[key].rstrip('.')}" for v in enum.values
                          if (key := f"{enum.full_name}.{v.name}") in notes)
    return {"type": "string", "enum": values,
            "description": " ".join(filter(None, [notes.get(enum.full_name, ""), described]))}
