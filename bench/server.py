"""The service under test: `uvicorn app.main:app` in a subprocess with its own settings."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


class Server:
    """One uvicorn worker on 127.0.0.1:`port`; `settings` are environment variables."""

    def __init__(self, store: Path, port: int, settings: dict[str, str] | None = None) -> None:
        env = {**os.environ, "ADAPTERS_DIR": str(store), "STORE_POLL_SECONDS": "0",
               "LOG_LEVEL": "warning", "MAX_QUEUE_ROWS": "100000", **(settings or {})}
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port),
             "--workers", "1", "--log-level", "warning", "--no-access-log"], env=env)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with code {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("server did not become ready")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)

    def __enter__(self) -> Server:
        self.wait_ready()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
