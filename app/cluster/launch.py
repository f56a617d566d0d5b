"""`adapter-serve cluster`: start (or join) a Ray cluster and deploy the service on Ray Serve."""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import ray
from ray import serve

from app.cluster.deployment import build_app
from app.cluster.jobs import NAMESPACE
from app.config import Settings

log = logging.getLogger(__name__)
APP_NAME = "adapter-serve"
# Besides the Settings fields: where the object store is, for nodes of a cluster joined with
# --address (credentials come from each node's environment or instance role).
STORE_ENVIRONMENT = ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION")


@dataclass(frozen=True)
class ClusterOptions:
    replicas: int
    """Serving replicas, each the whole service on its own share of a node."""
    address: str | None
    """A running Ray cluster to join (e.g. ray://head:10001 or auto); None: start one here."""
    host: str
    """Bind address of Ray Serve's HTTP proxy."""
    port: int
    """Its port."""
    replica_cpus: float
    """CPUs each replica reserves."""
    replica_gpus: float
    """GPUs each replica reserves (1: one GPU per replica)."""


def settings_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The variables of this environment that set Settings, to reach every node's replicas."""
    env = os.environ if environ is None else environ
    names = {name.upper() for name in Settings.model_fields} | set(STORE_ENVIRONMENT)
    return {name: value for name, value in env.items() if name.upper() in names}


def local_cpus(options: ClusterOptions, settings: Settings, cores: int | None = None) -> int:
    """Logical CPUs of a Ray cluster started here: the cores, or as many as the replicas and
    the training jobs reserve together, if more. Ray schedules by these reservations, so a
    machine whose replicas reserve every core would leave a training job pending for ever; on
    one machine they share the cores instead (the replicas idle between requests)."""
    reserved = options.replicas * options.replica_cpus \
        + settings.training_concurrency * settings.cluster_train_cpus
    return max(cores or os.cpu_count() or 1, math.ceil(reserved))


def deploy(options: ClusterOptions, blocking: bool = True) -> None:
    """Deploy the service; with `blocking`, serve until interrupted, then take it down."""
    start: dict[str, Any] = {}
    if options.address is None:  # a new local cluster: room for the replicas and training
        start["num_cpus"] = local_cpus(options, Settings())
        log.info("starting a local Ray cluster with %d logical CPUs", start["num_cpus"])
    ray.init(address=options.address, namespace=NAMESPACE, include_dashboard=False,
             runtime_env={"env_vars": settings_environment()}, **start)
    try:
        serve.start(http_options={"host": options.host, "port": options.port})
        args: dict[str, Any] = {"replicas": options.replicas,
                                "replica_cpus": options.replica_cpus,
                                "replica_gpus": options.replica_gpus}
        serve.run(build_app(args), name=APP_NAME, route_prefix="/")
        log.info("serving on http://%s:%d with %d replicas", options.host, options.port,
                 options.replicas)
        if not blocking:
            return
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:  # Ctrl+C, also while deploying
        log.info("stopping: the application is deleted; a joined Ray cluster keeps running")
    if blocking:
        serve.delete(APP_NAME)
        ray.shutdown()
