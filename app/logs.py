"""Logging: one JSON object per line (or plain text), each carrying the id of the request
being served when there is one."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from contextvars import ContextVar
from typing import Any

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
# An id from a client is echoed into logs and headers: keep it short and free of odd bytes.
_CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")
# LogRecord's own attributes; anything else on a record came from `extra=` and is logged.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime",
                                                                          "request_id"}


_HANDLER_NAME = "adapter-serve"


def new_request_id(given: str | None) -> str:
    """The client's X-Request-ID when it is sane, else a fresh one."""
    return given if given and _CLIENT_ID_RE.match(given) else uuid.uuid4().hex


class _ContextFilter(logging.Filter):
    """Adds the request id, and fields fixed for the process (a training worker's job id)."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__()
        self.fields = fields

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        for key, value in self.fields.items():
            setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                    + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            out["request_id"] = request_id
        out.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the time (test capture and redirections swap it)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def configure_logging(level: str, fmt: str, **fields: str) -> None:
    """Route every logger (uvicorn's included) through one handler on the root logger."""
    handler = _StderrHandler()
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(_ContextFilter(fields))
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)  # ours, from an earlier start in this process
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # The access log is app.access (it has the request id); uvicorn logs requests only while
    # its access logger has a handler somewhere up the chain.
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False
