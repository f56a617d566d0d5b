"""The FastAPI application: create_app() and its lifespan (where the model is loaded, once)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI, Request, Response

from app import __version__
from app.api import errors
from app.api.routes import adapters, health, jobs, predict, training
from app.config import Settings, get_settings
from app.services import Services

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        cfg = settings or get_settings()
        logging.basicConfig(level=cfg.log_level.upper(),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        services = await anyio.to_thread.run_sync(Services.build, cfg)
        await services.start()
        app.state.services = services
        log.info("ready: %d adapters in %s", len(services.registry.names()), cfg.adapters_dir)
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

    @app.middleware("http")
    async def add_request_id(request: Request,
                             call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        rid = errors.request_id(request)
        response = await call_next(request)
        response.headers[errors.REQUEST_ID_HEADER] = rid
        return response

    app.include_router(health.router)
    app.include_router(predict.router)
    app.include_router(training.router)
    app.include_router(adapters.router)
    app.include_router(jobs.router)
    return app


app = create_app()
