"""Prometheus metrics: events are counted where they happen; state is a snapshot the service
takes when /metrics is scraped, so a gauge can never drift from the truth."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.status import AdapterResidency, DeviceMemory, ServiceStatus

NAMESPACE = "adapter_serve"
EVENTS = CollectorRegistry()  # process-wide: one service per process
ProcessCollector(registry=EVENTS)  # process_resident_memory_bytes, process_cpu_seconds_total
OTHER_TASKS = "_other"  # the `task` label of adapters beyond METRICS_TASK_LABELS
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
ADAPTER_COLD_LOAD_SECONDS = Histogram(
    "adapter_cold_load_seconds", "Reading one adapter version from disk: read, sha256, header "
    "check, decode.", namespace=NAMESPACE, registry=EVENTS,
    buckets=(.001, .002, .004, .008, .015, .03, .06, .12, .25, .5, 1, 2))
BATCH_SECONDS = Histogram("batch_forward_seconds", "Time of one forward pass, decode included.",
                          namespace=NAMESPACE, registry=EVENTS, buckets=LATENCY_BUCKETS)
EXPLAIN_STEPS = Histogram("explain_steps", "Integration steps of one explained input, after "
                          "refinement (EXPLAIN_TOLERANCE).", namespace=NAMESPACE,
                          registry=EVENTS, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
EXPLAIN_POINTS = Counter("explain_points", "Points on integration paths computed (each a row "
                         "of an explain pass: a forward and a backward).", namespace=NAMESPACE,
                         registry=EVENTS)


class ServiceCollector(Collector):
    """Gauges and totals read from a status snapshot taken at scrape time."""

    def __init__(self, snapshot: Callable[[], ServiceStatus]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot()
        yield _gauge("queue_rows", "Rows waiting for a forward pass.", s.queue_rows)
        yield _gauge("adapters_stored", "Adapter names in the store.", s.adapters_stored)
        yield from _residency(s.residency)
        jobs = GaugeMetricFamily(f"{NAMESPACE}_training_jobs", "Training jobs by status.",
                                 labels=["status"])
        for status, n in sorted(s.jobs.items()):
            jobs.add_metric([status], n)
        yield jobs
        progress = GaugeMetricFamily(f"{NAMESPACE}_training_progress_ratio", "Share of the "
                                     "optimiser steps done, per running job.",
                                     labels=["job", "name"])
        for job in s.running:
            progress.add_metric([job.job_id, job.name], job.fraction)
        yield progress
        yield _gauge("training_workers", "Live training worker processes.", s.workers_alive)
        if s.device_memory is not None:
            yield from _device_memory(s.device_memory)


def _residency(r: AdapterResidency) -> Iterator[Metric]:
    yield _gauge("adapters_resident", "Adapter versions on the device.", r.device.adapters)
    tiers = {"device": r.device, "host": r.host}
    for name, doc, field in (
            ("tier_adapters", "Adapter versions held in a memory tier.", "adapters"),
            ("tier_bytes", "Bytes of the adapters held in a memory tier.", "bytes"),
            ("tier_budget_bytes", "DEVICE_ADAPTER_BYTES / HOST_ADAPTER_BYTES.", "budget")):
        family = GaugeMetricFamily(f"{NAMESPACE}_{name}", doc, labels=["tier"])
        for tier, state in tiers.items():
            family.add_metric([tier], getattr(state, field))
        yield family
    lookups = CounterMetricFamily(f"{NAMESPACE}_adapter_lookups", "Requests' adapter lookups "
                                  "by the tier that held the adapter (disk: a cold load).",
                                  labels=["tier"])
    for tier, n in sorted(r.lookups.items()):
        lookups.add_metric([tier], n)
    yield lookups
    yield _gauge("adapter_hit_ratio", "Share of lookups answered from a memory tier since the "
                 "start.", r.hit_ratio)
    yield CounterMetricFamily(f"{NAMESPACE}_adapter_cold_loads", "Adapter versions read from "
                              "disk.", value=r.cold_loads)
    yield CounterMetricFamily(f"{NAMESPACE}_adapter_hot_path_loads", "Cold loads made by a batch "
                              "(its adapter was evicted after the request prefetched it).",
                              value=r.hot_path_loads)
    yield CounterMetricFamily(f"{NAMESPACE}_adapter_loads", "Adapter versions put on the device "
                              "(from host memory or disk).", value=r.promotions)
    evictions = CounterMetricFamily(f"{NAMESPACE}_adapter_evictions", "Adapter versions evicted "
                                    "from a memory tier to make room (LRU).", labels=["tier"])
    for tier, n in sorted(r.evictions.items()):
        evictions.add_metric([tier], n)
    yield evictions


def _device_memory(memory: DeviceMemory) -> Iterator[Metric]:
    yield _gauge("device_memory_allocated_bytes", "Tensor memory on the GPU.", memory.allocated)
    yield _gauge("device_memory_reserved_bytes", "Memory held by the caching allocator.",
                 memory.reserved)
    yield _gauge("device_memory_total_bytes", "The GPU's memory.", memory.total)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{NAMESPACE}_{name}", doc, value=value)


def render(snapshot: Callable[[], ServiceStatus]) -> bytes:
    """The text exposition: process-wide events, then the state `snapshot` reports."""
    state = CollectorRegistry(auto_describe=False)
    state.register(ServiceCollector(snapshot))
    return generate_latest(EVENTS) + generate_latest(state)
