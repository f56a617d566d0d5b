"""What a running deployment says about its replicas: for the cluster tests, the benchmark and
an operator's checks (run from a driver connected to the cluster)."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import ray
from ray import serve

from app.cluster.asgi import Answer, Forwarded
from app.cluster.deployment import SERVED_BY_HEADER

REPLICA_DEPLOYMENT = "ServiceReplica"


def running_replicas(app_name: str) -> int:
    """Serving replicas in the RUNNING state."""
    status = serve.status().applications[app_name].deployments[REPLICA_DEPLOYMENT]
    # Typed as ReplicaState keys, plain strings at run time: compared by name either way.
    return sum(n for state, n in status.replica_states.items()
               if getattr(state, "value", state) == "RUNNING")


def replica_pid(replica_id: str) -> int:
    """The process id of the replica that X-Served-By names (on its node)."""
    [actor] = [a for a in ray.util.list_named_actors(all_namespaces=True)
               if REPLICA_DEPLOYMENT in a["name"] and a["name"].endswith(replica_id)]
    handle = ray.get_actor(actor["name"], namespace=actor["namespace"])
    return int(ray.get(handle.__ray_call__.remote(lambda self: os.getpid())))


def request(method: str, path: str, body: Any = None, key: str | None = None) -> Forwarded:
    headers = [(b"content-type", b"application/json")]
    if key:
        headers.append((b"authorization", f"Bearer {key}".encode()))
    return Forwarded(method, path, b"", headers,
                     b"" if body is None else json.dumps(body).encode())


def ask_every_replica(app_name: str, req: Forwarded, replicas: int, timeout: float = 60,
                      ok: int = 200) -> dict[str, Answer]:
    """Send `req` straight to the replicas, without affinity (so Ray spreads the calls), until
    `replicas` distinct ones have answered it with status `ok`: their answers by replica id."""
    handle = serve.get_deployment_handle(REPLICA_DEPLOYMENT, app_name)
    answers: dict[str, Answer] = {}
    deadline = time.monotonic() + timeout
    while len(answers) < replicas:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(answers)} of {replicas} replicas answered {req.path} "
                               f"with {ok} within {timeout} s")
        answer: Answer = handle.answer.remote(req).result()
        if answer.status == ok:
            answers[dict(answer.headers)[SERVED_BY_HEADER].decode()] = answer
        else:
            time.sleep(0.05)
    return answers
