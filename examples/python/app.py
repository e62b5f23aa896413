"""A wasi:http handler in Python, built into a component by componentize-py.

| request              | answer                                        |
|----------------------|-----------------------------------------------|
| `GET /`              | `GREETING from Python` (GREETING from --env)  |
| `POST /echo`         | the request body back                         |
| `GET /stream?n=N`    | N lines, `piece I`, 50 ms apart, as they come |
| `GET /env?name=NAME` | `NAME=VALUE` of the guest's environment       |
| `GET /visits`        | `visit N`: a count kept in the key-value store |
|                      | the route is granted (the bucket `""`)        |
| anything else        | 404                                           |
"""

import os

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import atomics, monotonic_clock, store
from wit_world.imports.streams import StreamError_Closed
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    Method_Post,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)

TEXT = "text/plain; charset=utf-8"


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        target = request.path_with_query() or ""
        path, _, query = target.partition("?")
        if path == "/":
            greeting = os.environ.get("GREETING", "hello")
            respond(response_out, 200, f"{greeting} from Python\n".encode())
        elif path == "/echo" and isinstance(request.method(), Method_Post):
            respond(response_out, 200, read_body(request), "application/octet-stream")
        elif path == "/stream":
            stream(response_out, int(params(query).get("n", "3")))
        elif path == "/visits":
            try:
                visits = atomics.increment(store.open(""), "visits", 1)
                respond(response_out, 200, f"visit {visits}\n".encode())
            except Err as err:
                respond(response_out, 503, f"no store: {err.value}\n".encode())
        elif path == "/env":
            name = params(query).get("name", "")
            respond(response_out, 200, f"{name}={os.environ.get(name, '')}\n".encode())
        else:
            respond(response_out, 404, b"not found\n")


def params(query: str) -> dict:
    return dict(pair.partition("=")[::2] for pair in query.split("&") if pair)


def read_body(request: IncomingRequest) -> bytes:
    body = request.consume()
    data = bytearray()
    with body.stream() as stream:
        while True:
            try:
                data += stream.blocking_read(65536)
            except Err as err:
                if isinstance(err.value, StreamError_Closed):
                    break
                raise
    return bytes(data)


def start(response_out: ResponseOutparam, status: int, content_type: str, length=None):
    """Sends the response head; returns the body to write."""
    fields = [("content-type", content_type.encode())]
    if length is not None:
        fields.append(("content-length", str(length).encode()))
    response = OutgoingResponse(Fields.from_list(fields))
    response.set_status_code(status)
    body = response.body()
    ResponseOutparam.set(response_out, Ok(response))
    return body


def respond(response_out, status: int, data: bytes, content_type=TEXT):
    body = start(response_out, status, content_type, len(data))
    with body.write() as out:
        for at in range(0, len(data), 4096):
            out.blocking_write_and_flush(data[at : at + 4096])
    OutgoingBody.finish(body, None)


def stream(response_out, pieces: int):
    body = start(response_out, 200, TEXT)
    with body.write() as out:
        for i in range(pieces):
            out.blocking_write_and_flush(f"piece {i}\n".encode())
            monotonic_clock.subscribe_duration(50_000_000).block()
    OutgoingBody.finish(body, None)
