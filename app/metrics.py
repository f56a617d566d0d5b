"""Prometheus metrics: events are counted where they happen; state is read from the live
objects when /metrics is scraped, so a gauge can never drift from the truth."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from app.services import Services

NAMESPACE = "adapter_serve"
EVENTS = CollectorRegistry()  # process-wide: one service per process
ProcessCollector(registry=EVENTS)  # process_resident_memory_bytes, process_cpu_seconds_total
LATENCY_BUCKETS = (.005, .01, .02, .04, .08, .15, .3, .6, 1.2, 2.5, 5, 10, 30)

HTTP_REQUESTS = Counter("http_requests", "HTTP requests by route template and status.",
                        ["method", "route", "status"], namespace=NAMESPACE, registry=EVENTS)
HTTP_SECONDS = Histogram("http_request_duration_seconds", "HTTP request latency by route.",
                         ["method", "route"], namespace=NAMESPACE, registry=EVENTS,
                         buckets=LATENCY_BUCKETS)
PREDICT_INPUTS = Counter("predict_inputs", "Inputs answered by task (adapter name).", ["task"],
                         namespace=NAMESPACE, registry=EVENTS)
PREDICT_SECONDS = Histogram("predict_duration_seconds", "Prediction latency (queue, forward, "
                            "decode) by task.", ["task"], namespace=NAMESPACE, registry=EVENTS,
                            buckets=LATENCY_BUCKETS)
BATCH_ROWS = Histogram("batch_rows", "Rows in one forward pass of the base.", namespace=NAMESPACE,
                       registry=EVENTS, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
BATCH_TOKENS = Histogram("batch_padded_tokens", "Padded tokens (rows x longest) in one forward "
                         "pass.", namespace=NAMESPACE, registry=EVENTS,
                         buckets=(64, 256, 1024, 2048, 4096, 8192, 16384, 32768))
BATCH_ADAPTERS = Histogram("batch_adapters", "Distinct adapters in one forward pass.",
                           namespace=NAMESPACE, registry=EVENTS,
                           buckets=(1, 2, 3, 4, 6, 8, 16, 32, 64))
BATCH_SECONDS = Histogram("batch_forward_seconds", "Time of one forward pass, decode included.",
                          namespace=NAMESPACE, registry=EVENTS, buckets=LATENCY_BUCKETS)


class ServiceCollector(Collector):
    """Gauges and totals read from one running service at scrape time."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def collect(self) -> Iterator[Metric]:
        s = self.services
        yield _gauge("queue_rows", "Rows waiting for a forward pass.", s.batcher.queued_rows)
        yield _gauge("adapters_stored", "Adapter names in the store.", len(s.registry.names()))
        yield _gauge("adapters_resident", "Adapter versions loaded on the device.",
                     len(s.registry.resident_keys()))
        yield _gauge("adapters_resident_capacity", "MAX_RESIDENT_ADAPTERS.", s.registry.capacity)
        yield CounterMetricFamily(f"{NAMESPACE}_adapter_loads", "Adapter versions loaded onto "
                                  "the device.", value=s.registry.stats.loads)
        yield CounterMetricFamily(f"{NAMESPACE}_adapter_evictions", "Adapter versions evicted "
                                  "to make room (LRU).", value=s.registry.stats.evictions)
        jobs = GaugeMetricFamily(f"{NAMESPACE}_training_jobs", "Training jobs by status.",
                                 labels=["status"])
        for status, n in sorted(s.jobs.db.counts().items()):
            jobs.add_metric([status], n)
        yield jobs
        progress = GaugeMetricFamily(f"{NAMESPACE}_training_progress_ratio", "Share of the "
                                     "optimiser steps done, per running job.",
                                     labels=["job", "name"])
        for job in s.jobs.db.list("running"):
            done = (job.progress or {}).get("fraction", 0.0)
            progress.add_metric([job.id, job.name], float(done))
        yield progress
        yield _gauge("training_workers", "Live training worker processes.", s.jobs.workers_alive())
        device = s.encoder.device
        if device.type == "cuda":
            yield _gauge("device_memory_allocated_bytes", "Tensor memory on the GPU.",
                         torch.cuda.memory_allocated(device))
            yield _gauge("device_memory_reserved_bytes", "Memory held by the caching allocator.",
                         torch.cuda.memory_reserved(device))
            yield _gauge("device_memory_total_bytes", "The GPU's memory.",
                         torch.cuda.get_device_properties(device).total_memory)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{NAMESPACE}_{name}", doc, value=value)


def render(services: Services) -> bytes:
    """The text exposition: process-wide events, then the service's state."""
    state = CollectorRegistry(auto_describe=False)
    state.register(ServiceCollector(services))
    return generate_latest(EVENTS) + generate_latest(state)
