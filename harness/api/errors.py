"""EC2's error answers: a code, a message, an HTTP status. The library refuses with
`BadInput("Code: message")`; the code at the front is EC2's, so it is passed on as is.

A full disk (`DiskFull`, the CLI's exit 3) is not a fault of the server's code: it is EC2's
`InsufficientCapacity` ("not enough capacity to fulfill your request; wait for capacity to
become available"), one of the server error codes EC2 lists, with HTTP 503 (the request was
valid; the service cannot take it until space is freed, and SDKs retry a 503 with backoff).
A 500 stays what it means here, a bug (InternalError), so a full disk is never counted as one.
"""

from __future__ import annotations

import re

from builder.errors import AmilabError, DiskFull

INSUFFICIENT_CAPACITY = 503  # HTTP status of InsufficientCapacity
_CODE = re.compile(r"^([A-Z][A-Za-z0-9]*(?:\.[A-Za-z0-9]+)*): (.*)$", re.S)


class ApiError(Exception):
    """An EC2 error reply. 400 is the client's fault, 500 (InternalError) the server's, 503
    (InsufficientCapacity) a full disk."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


def from_library(e: AmilabError, default_code: str = "InvalidParameterValue") -> ApiError:
    """The library's refusal as EC2's error: its leading code if it has one, else
    `default_code` (what the action's refusals mean when the library names none)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if isinstance(e, DiskFull):
        return no_space(e)
    if m := _CODE.match(text):
        return ApiError(m.group(1), m.group(2))
    if e.exit_code == 2:
        return ApiError(default_code, text)
    # environment problems and failed work: the request was fine, the server could not
    return ApiError("InternalError", text, 500)


def no_space(e: DiskFull) -> ApiError:
    """A full disk as EC2 says it cannot store what was asked (see the module's note)."""
    return ApiError(
        "InsufficientCapacity",
        f"There is not enough storage capacity to fulfill your request: {e}",
        INSUFFICIENT_CAPACITY,
    )


def missing(name: str) -> ApiError:
    return ApiError("MissingParameter", f"The request must contain the parameter {name}")


def invalid(name: str, value: object, why: str = "") -> ApiError:
    tail = f": {why}" if why else ""
    return ApiError("InvalidParameterValue", f"Invalid value '{value}' for {name}{tail}")
