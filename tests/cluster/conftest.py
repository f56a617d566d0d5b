"""A local two-node Ray cluster serving the service from two replicas, its store on the moto
S3 server: for the cluster tests (marked slow)."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

ray = pytest.importorskip("ray")  # the `cluster` extra; the `test` extra installs it

from ray import serve  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from app.cluster.jobs import NAMESPACE  # noqa: E402
from app.cluster.launch import APP_NAME  # noqa: E402

ADMIN_KEY = "cluster-admin-key"


@dataclass
class RayServe:
    url: str
    settings: dict[str, Any]
    adapters_dir: str

    def client(self, key: str | None = ADMIN_KEY) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="package")
def ray_serve(tiny_model_dir: Path, s3_endpoint: str,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayServe]:
    """Two nodes (2 logical CPUs each), two replicas of one CPU (one per node when Ray spreads
    them), room for one training task; every replica and task reaches the S3 server."""
    from app.cluster.deployment import build_app
    from tests import s3

    bucket = f"cluster-{uuid.uuid4().hex[:12]}"
    s3.make_bucket(bucket)
    cache = tmp_path_factory.mktemp("cluster-cache")
    settings = {"base_model": str(tiny_model_dir), "adapters_dir": f"s3://{bucket}/store",
                "adapter_cache_dir": str(cache), "num_threads": 1, "train_threads": 1,
                "store_poll_seconds": 1, "preload_adapters": False, "log_format": "text",
                "api_keys": f"{ADMIN_KEY}:admin", "max_resident_adapters": 8,
                "cluster_affinity_adapters": 8}
    env = {**s3.ENVIRONMENT, "AWS_ENDPOINT_URL": s3_endpoint}
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "include_dashboard": False})
    cluster.add_node(num_cpus=2)
    try:
        ray.init(address=cluster.address, namespace=NAMESPACE,
                 runtime_env={"env_vars": env})
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app({"replicas": 2, "replica_cpus": 1, "settings": settings}),
                  name=APP_NAME, route_prefix="/")
        yield RayServe(f"http://127.0.0.1:{port}", settings, settings["adapters_dir"])
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()
