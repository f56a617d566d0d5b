"""A Python client of the adapter-serve API: `from app.client import Client, AsyncClient`."""

from app.client.aio import AsyncClient, AsyncJob
from app.client.errors import (
    AdapterServeError,
    Conflict,
    Forbidden,
    GatewayTimeout,
    Invalid,
    JobFailed,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    QueueFull,
    ServerError,
    Unauthorized,
)
from app.client.sync import Client, Job

__all__ = ["AdapterServeError", "AsyncClient", "AsyncJob", "Client", "Conflict", "Forbidden",
           "GatewayTimeout", "Invalid", "Job", "JobFailed", "NotFound", "Overloaded",
           "PayloadTooLarge", "QueueFull", "ServerError", "Unauthorized"]
