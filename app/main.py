"""The FastAPI application: create_app() and its lifespan (where the model is loaded, once)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app import __version__
from app.api import errors
from app.api.auth import KeyRing, PredictScope
from app.api.middleware import BodyLimitMiddleware, ObserveMiddleware
from app.api.routes import adapters, console, health, jobs, meta, predict, training
from app.config import Settings, get_settings
from app.logs import configure_logging
from app.services import JobsFactory, Services
from app.training.manager import JobManager

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, make_jobs: JobsFactory = JobManager) -> FastAPI:
    """The service; `make_jobs` builds its training job manager (a cluster's replicas pass
    theirs: app.cluster.jobs)."""
    cfg = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(cfg.log_level, cfg.log_format)
        keys = KeyRing.from_settings(cfg)  # a malformed key list stops the start, loudly
        log.info("API keys: %s", f"{len(keys.digests)} configured" if keys.enabled
                 else "none (every endpoint is open)")
        services = await anyio.to_thread.run_sync(Services.build, cfg, make_jobs)
        await services.start()
        app.state.keys, app.state.services = keys, services
        log.info("ready: %d adapters in %s", services.status().adapters_stored, cfg.adapters_dir)
        try:
            yield
        finally:
            app.state.services = None
            await services.stop()

    app = FastAPI(
        title="adapter-serve",
        version=__version__,
        description="One frozen BERT encoder, many hot-swapped bottleneck adapters.",
        lifespan=lifespan,
    )
    errors.install(app)
    # Added inner to outer: the access log and metrics see the body limit's 413s too.
    app.add_middleware(BodyLimitMiddleware, limit=cfg.max_request_bytes, exempt=_own_body_limit)
    app.add_middleware(ObserveMiddleware)
    if cfg.cors_origin_list:
        app.add_middleware(CORSMiddleware, allow_origins=cfg.cors_origin_list,
                           allow_methods=["*"], allow_headers=["*"],
                           expose_headers=[errors.REQUEST_ID_HEADER, "Retry-After", "Location"])

    app.include_router(health.router)
    app.include_router(meta.router)
    for router in (predict.router, training.router, adapters.router, jobs.router):
        app.include_router(router, dependencies=[PredictScope], responses=errors.responses(401, 403))
    if cfg.console:
        app.include_router(console.router)
    return app


def _own_body_limit(method: str, path: str) -> bool:
    """Training uploads (MAX_TRAIN_UPLOAD_BYTES) and adapter imports (MAX_ADAPTER_BYTES)."""
    return (method == "POST" and path.rstrip("/") == "/adapters") or (
        method == "PUT" and path.startswith("/adapters/"))


app = create_app()
