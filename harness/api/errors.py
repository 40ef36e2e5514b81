"""EC2's error answers: a code, a message, an HTTP status. The library refuses with
`BadInput("Code: message")`; the code at the front is EC2's, so it is passed on as is."""

from __future__ import annotations

import re

from builder.errors import AmilabError

_CODE = re.compile(r"^([A-Z][A-Za-z0-9]*(?:\.[A-Za-z0-9]+)*): (.*)$", re.S)


class ApiError(Exception):
    """An EC2 error reply. 400 is the client's fault, 500 (InternalError) the server's."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


def from_library(e: AmilabError, default_code: str = "InvalidParameterValue") -> ApiError:
    """The library's refusal as EC2's error: its leading code if it has one, else
    `default_code` (what the action's refusals mean when the library names none)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if m := _CODE.match(text):
        return ApiError(m.group(1), m.group(2))
    if e.exit_code == 2:
        return ApiError(default_code, text)
    # environment problems and failed work: the request was fine, the server could not
    return ApiError("InternalError", text, 500)


def missing(name: str) -> ApiError:
    return ApiError("MissingParameter", f"The request must contain the parameter {name}")


def invalid(name: str, value: object, why: str = "") -> ApiError:
    tail = f": {why}" if why else ""
    return ApiError("InvalidParameterValue", f"Invalid value '{value}' for {name}{tail}")
