"""The service on Ray Serve: a light ingress, and replicas that each run the whole service.

The ingress takes every HTTP request from Ray Serve's proxy and forwards it, as data, to a
replica chosen by adapter affinity: a request for /predict/{task} carries `task` as Ray Serve's
multiplexed model id, so it goes to a replica that announced it holds that adapter (or, failing
that, to the one holding fewest). Each replica runs the same FastAPI app as one machine, in
process: the frozen base, per-row routing and the service's own cross-task batcher are untouched
(no `@serve.batch`, which would split batches per model id). `build_app` is the import path for
`serve deploy` (deploy/serve.yaml) and `adapter-serve cluster`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

from ray import serve
from ray.exceptions import RayError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from app.api.errors import service_error_response
from app.cluster import asgi
from app.cluster.asgi import Answer, Forwarded, Head
from app.cluster.jobs import cluster_jobs
from app.config import Settings
from app.constants import NAME_RE
from app.errors import NotReadyError, ReplicaUnavailableError
from app.main import create_app

log = logging.getLogger(__name__)
AFFINITY_PREFIX = "/predict/"  # the one path that names the adapter it runs
STREAMED_SUFFIX = "/events"  # server-sent events: the answer is relayed as it is written
# Requests one replica takes at once: many, since its own batcher forms the batches (Ray Serve's
# default, 5, would starve it); the ingress only relays.
REPLICA_MAX_ONGOING = 256
INGRESS_MAX_ONGOING = 1024
SERVED_BY_HEADER = b"x-served-by"  # the replica that answered: to see affinity at work
# Ray Serve's proxy gives every request an X-Request-ID (the client's, else a new one), passes it
# on (so the app uses it) and writes it on the answer itself: the app's copy would repeat it.
PROXY_WRITES = frozenset({b"x-request-id"})


def affinity_key(path: str) -> str:
    """The adapter a request runs (its multiplexed model id), or "" for any replica."""
    if not path.startswith(AFFINITY_PREFIX):
        return ""
    name = path[len(AFFINITY_PREFIX):].rstrip("/")
    return name if NAME_RE.match(name) else ""


class ServiceReplica:
    """One replica: the service's app and its lifespan, answering forwarded requests."""

    async def __init__(self, settings: dict[str, Any]) -> None:  # type: ignore[misc]
        cfg = Settings(**settings)
        self.app = create_app(cfg, cluster_jobs(settings))
        self._life = self.app.router.lifespan_context(self.app)
        await self._life.__aenter__()  # the model loads here, once per replica

        async def held(adapter: str) -> str:  # the registry loads it; Ray only routes by it
            return adapter

        self._hold: Callable[[str], Awaitable[str]] = serve.multiplexed(
            max_num_models_per_replica=cfg.cluster_affinity_adapters)(held)
        self._served_by = (SERVED_BY_HEADER,
                           serve.get_replica_context().replica_id.unique_id.encode())

    async def answer(self, req: Forwarded) -> Answer:
        await self._announce()
        whole = await asgi.answer(self.app, req)
        return Answer(whole.status, [*whole.headers, self._served_by], whole.body)

    async def stream(self, req: Forwarded) -> AsyncIterator[Head | bytes]:
        await self._announce()
        async for part in asgi.call(self.app, req):
            yield Head(part.status, [*part.headers, self._served_by]) if isinstance(
                part, Head) else part

    async def _announce(self) -> None:
        """Tell Ray Serve's routers that this replica holds the request's adapter now."""
        if adapter := serve.get_multiplexed_model_id():
            await self._hold(adapter)

    async def check_health(self) -> None:
        if getattr(self.app.state, "services", None) is None:
            raise NotReadyError("the service has stopped")

    async def __del__(self) -> None:
        await self._life.__aexit__(None, None, None)


class Ingress:
    """Relays each HTTP request to a replica, with its adapter as the affinity key."""

    def __init__(self, replicas: DeploymentHandle[Any], affinity: bool = True) -> None:
        self.replicas = replicas
        self.affinity = affinity  # off: Ray's default routing (the benchmark's baseline)

    async def __call__(self, request: Request) -> Response:
        req = Forwarded(request.method, request.url.path, request.scope.get("query_string", b""),
                        list(request.scope["headers"]), await request.body(),
                        (request.client.host, request.client.port) if request.client else None)
        handle = self.replicas
        if self.affinity and (key := affinity_key(req.path)):
            handle = handle.options(multiplexed_model_id=key)
        try:
            if req.path.endswith(STREAMED_SUFFIX):
                return await self._relay_stream(handle, req)
            whole: Answer = await handle.answer.remote(req)
        except RayError as exc:
            return _unavailable(request, exc)
        return _response(whole.status, whole.headers, whole.body)

    async def _relay_stream(self, handle: DeploymentHandle[Any], req: Forwarded) -> Response:
        parts = cast(DeploymentResponseGenerator[Any],
                     handle.options(stream=True).stream.remote(req))
        head = await parts.__anext__()
        assert isinstance(head, Head)

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in parts:
                    yield chunk
            except RayError as exc:  # the status has gone out: the stream just ends
                log.warning("stream of %s cut: %s", req.path, type(exc).__name__)

        response = StreamingResponse(body(), status_code=head.status)
        response.raw_headers = _relayed(head.headers)
        return response


def _response(status: int, headers: asgi.RawHeaders, body: bytes) -> Response:
    response = Response(body, status_code=status)
    response.raw_headers = _relayed(headers)  # as the replica wrote them, content-length too
    return response


def _relayed(headers: asgi.RawHeaders) -> asgi.RawHeaders:
    return [(k, v) for k, v in headers if k.lower() not in PROXY_WRITES]


def _unavailable(request: Request, exc: RayError) -> Response:
    log.warning("%s %s: no replica answered (%s)", request.method, request.url.path,
                type(exc).__name__)
    return service_error_response(request, ReplicaUnavailableError(
        "the replica serving this request stopped or cannot be reached; retry (another replica "
        "answers, or its replacement once started)"))


def build_app(args: dict[str, Any]) -> serve.Application:
    """The Ray Serve application. `args` (all optional): replicas, replica_cpus, replica_gpus,
    ingress_replicas, affinity (false: no adapter affinity), and settings (Settings fields for
    every replica and the job queue; the rest comes from each node's environment)."""
    settings = dict(args.get("settings") or {})
    replica = serve.deployment(
        name="ServiceReplica", num_replicas=int(args.get("replicas", 2)),
        max_ongoing_requests=REPLICA_MAX_ONGOING,
        ray_actor_options={"num_cpus": float(args.get("replica_cpus", 1)),
                           "num_gpus": float(args.get("replica_gpus", 0))},
    )(ServiceReplica).bind(settings)
    ingress = serve.deployment(
        name="Ingress", num_replicas=int(args.get("ingress_replicas", 1)),
        max_ongoing_requests=INGRESS_MAX_ONGOING, ray_actor_options={"num_cpus": 0},
    )(Ingress)
    return ingress.bind(replica, _flag(args.get("affinity", True)))


def _flag(value: object) -> bool:
    """A boolean from YAML or the command line ("false" is false)."""
    return value.strip().lower() not in ("0", "false", "no", "off") if isinstance(
        value, str) else bool(value)
