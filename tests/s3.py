"""A local S3-compatible server for the tests: moto in server mode, on a free port, with fake
credentials; no request leaves the machine."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import boto3
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.server import ThreadedMotoServer
from werkzeug.serving import make_server

ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_MAX_ATTEMPTS": "2",  # an endpoint that is down fails fast
}


class QuietHandler(MotoRequestHandler):
    def log_request(self, *args: Any) -> None:
        pass  # a line per request on stderr otherwise


class S3Server(ThreadedMotoServer):
    """moto's threaded server, answering one request at a time.

    moto checks a conditional write's If-None-Match and then writes, in two steps, so two
    concurrent creates of one key could both succeed. S3, MinIO and Ceph decide each conditional
    write atomically; one lock around every request gives the test double that guarantee.
    """

    def _server_entry(self) -> None:
        app = DomainDispatcherApplication(create_backend_app)
        lock = threading.Lock()

        def one_at_a_time(environ: dict[str, Any], start_response: Callable[..., Any]
                          ) -> Iterable[bytes]:
            with lock:
                return list(app(environ, start_response))

        self._server = make_server(self._ip_address, self._port, one_at_a_time, threaded=True,
                                   request_handler=QuietHandler)
        self._server_ready_event.set()
        self._server.serve_forever()


@contextlib.contextmanager
def serve() -> Iterator[str]:
    """Start the server; yields its endpoint URL until the caller is done."""
    server = S3Server(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def make_bucket(name: str) -> None:
    boto3.client("s3").create_bucket(Bucket=name)


def client() -> Any:
    return boto3.client("s3")
