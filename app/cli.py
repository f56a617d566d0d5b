"""The `adapter-serve` command: serve, train or import offline into the store, or (jobs, predict)
ask a running server through the Python client."""

from __future__ import annotations

import argparse
import sys

from app.config import ClientSettings, get_settings
from app.tasks import TASK_TYPES


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.logs import configure_logging

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    # Our handler formats uvicorn's logs too (log_config=None keeps uvicorn from replacing it).
    uvicorn.run("app.main:app", host=args.host or settings.host, port=args.port or settings.port,
                log_level=settings.log_level.lower(), workers=1, log_config=None)
    return 0


def _cluster(args: argparse.Namespace) -> int:
    """Deploy on Ray Serve (the `cluster` extra): replicas on a Ray cluster, one HTTP API."""
    try:
        from app.cluster.launch import ClusterOptions, deploy
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.partition(".")[0] != "ray":
            raise
        print("error: adapter-serve cluster needs Ray Serve: pip install 'adapter-serve[cluster]'",
              file=sys.stderr)
        return 2
    from app.logs import configure_logging

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    deploy(ClusterOptions(args.replicas, args.address, args.host or settings.host,
                          args.port or settings.port, args.replica_cpus, args.replica_gpus))
    return 0


def _train(args: argparse.Namespace) -> int:
    """Train offline into the store (the same code as POST /adapters, without the server)."""
    import json
    import logging
    import os
    from pathlib import Path

    import torch

    from app.adapters.backends import open_store
    from app.adapters.storage import validate_name
    from app.client.progress import display
    from app.errors import ServiceError
    from app.model.encoder import FrozenEncoder
    from app.training.config import TrainConfig
    from app.training.data import parse_file, prepare
    from app.training.worker import train_and_store

    settings = get_settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(message)s")
    torch.set_num_threads(settings.train_threads or os.cpu_count() or 1)
    try:
        validate_name(args.name)
        fields = json.loads(args.config_json or "{}")
        if args.search is not None:
            fields["search"] = json.loads(args.search)
        config = TrainConfig(**fields)
        train = parse_file(Path(args.data).read_bytes(), args.data, "train")
        validation = (parse_file(Path(args.validation).read_bytes(), args.validation, "validation")
                      if args.validation else None)
        labels = [x.strip() for x in args.labels.split(",")] if args.labels else None
        data = prepare(args.task_type, train, validation, labels, config.validation_fraction,
                       config.seed, settings.max_train_rows, settings.max_text_chars)
        encoder = FrozenEncoder.load(settings.base_model, settings.device, "float32",
                                     settings.max_seq_length)
        epochs = config.resolved(args.task_type).epochs
        store = open_store(settings.adapters_dir, settings.adapter_cache_path)
        show = display(lines=True)  # a bar on a terminal, a line per epoch otherwise
        try:
            stored, result = train_and_store(
                encoder, store, args.name, data, config, args.description,
                on_progress=lambda p: show.step(p.epoch, p.epochs, p.step, p.total_steps, p.loss),
                on_epoch=lambda r: show.epoch(r, epochs),
                on_search=None if config.search is None else _search_line)
        finally:
            show.close()
    except ServiceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    search = stored.metrics.get("search")
    print(json.dumps({"name": stored.name, "version": stored.version,
                      **({"search": {k: search[k] for k in ("winner", "why", "stop_reason")},
                          "config": stored.metrics["config"]} if search else {}),
                      "best_epoch": result.best_epoch, "metrics": result.best_metrics,
                      "train_seconds": round(result.train_seconds, 1),
                      "examples_per_second": round(result.examples_per_second, 1),
                      "path": store.where(stored.name, stored.version)}))
    return 0


def _search_line(table: dict[str, object]) -> None:
    """One line on stderr per change of a search's trials table."""
    trials = table["trials"]
    assert isinstance(trials, list)
    last = trials[-1] if trials else {}
    print(f"search: trial {len(trials)}/{table['trials_requested']} {last.get('state', '')} "
          f"score={last.get('score', '-')} elapsed={table['elapsed_seconds']}s"
          + (f" -> winner trial {table['winner']}" if "winner" in table else ""), file=sys.stderr)


def _import(args: argparse.Namespace) -> int:
    """Import into the store offline: a directory saved by AdapterHub or PEFT, an archive of
    one, or this service's weights file (the same checks as PUT /adapters/{name})."""
    import json
    import tempfile
    from pathlib import Path

    from app.adapters import interop
    from app.adapters.archive import archive_kind, unpack
    from app.adapters.backends import open_store
    from app.adapters.storage import validate_name
    from app.errors import ServiceError
    from app.model.encoder import FrozenEncoder

    settings = get_settings()
    path = Path(args.path)
    try:
        validate_name(args.name)
        encoder = FrozenEncoder.load(settings.base_model, settings.device, "float32",
                                     settings.max_seq_length)
        base = interop.BaseContext(encoder.info, int(encoder.model.config.vocab_size),
                                   encoder.pooler)
        with tempfile.TemporaryDirectory(prefix="adapter-import-") as tmp:
            if path.is_dir():
                data = interop.to_file(args.name, path, base, settings.strict_base)
            else:
                raw = path.read_bytes()
                kind = archive_kind(raw)
                data = raw if kind is None else interop.to_file(
                    args.name, unpack(raw, kind, Path(tmp), settings.max_adapter_bytes), base,
                    settings.strict_base)
        store = open_store(settings.adapters_dir, settings.adapter_cache_path)
        stored = store.import_bytes(args.name, data, encoder.info)
    except ServiceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"name": stored.name, "version": stored.version,
                      "task_type": stored.task_type, "labels": stored.labels,
                      "source": stored.source.get("library", "adapter-serve"),
                      "warnings": stored.warnings}))
    return 0


def _ask(args: argparse.Namespace) -> int:
    """jobs / predict: one call to a running server, its answer printed as JSON."""
    import json

    import httpx

    from app.client import AdapterServeError, Client

    env = ClientSettings()
    try:
        with Client(args.url or env.url, args.api_key or env.api_key) as client:
            if args.command == "jobs":
                answer = {"jobs": [j.model_dump(mode="json")
                                   for j in client.jobs(args.status, args.limit)]}
            else:
                explain = {"explain": True, "explain_steps": args.explain_steps,
                           "explain_label": args.explain_label} if args.explain else {}
                answer = client.predict(args.task, args.text, args.version,
                                        **explain).model_dump(mode="json")
    except AdapterServeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except httpx.TransportError as exc:
        print(f"error: cannot reach {args.url or env.url}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(answer))
    return 0


def _client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="the server (default: ADAPTER_SERVE_URL or "
                        "http://127.0.0.1:8000)")
    parser.add_argument("--api-key", help="Bearer key (default: ADAPTER_SERVE_API_KEY)")
    parser.set_defaults(func=_ask)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adapter-serve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP service (settings from the environment)")
    serve.add_argument("--host", help="bind address (default: HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: PORT or 8000)")
    serve.set_defaults(func=_serve)
    cluster = sub.add_parser("cluster", help="start (or join) a Ray cluster and serve the same "
                             "API from replicas on Ray Serve")
    cluster.add_argument("--replicas", type=int, default=2, help="serving replicas (default 2)")
    cluster.add_argument("--address", help="join this Ray cluster (e.g. auto, ray://head:10001); "
                         "default: start one on this machine")
    cluster.add_argument("--host", help="bind address of the HTTP proxy (default: HOST)")
    cluster.add_argument("--port", type=int, help="its port (default: PORT)")
    cluster.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs per replica")
    cluster.add_argument("--replica-gpus", type=float, default=0.0, help="GPUs per replica "
                         "(1 on GPU nodes)")
    cluster.set_defaults(func=_cluster)
    train = sub.add_parser("train", help="train an adapter offline into ADAPTERS_DIR")
    train.add_argument("--name", required=True, help="adapter name")
    train.add_argument("--data", required=True, help="training rows: JSONL or CSV")
    train.add_argument("--task-type", default=TASK_TYPES[0], choices=TASK_TYPES)
    train.add_argument("--labels", help="comma-separated class names (default: from the data)")
    train.add_argument("--validation", help="validation rows (default: a split of --data)")
    train.add_argument("--config-json", help='TrainConfig as JSON, e.g. \'{"epochs": 3}\'')
    train.add_argument("--search", help='search the adapter design (config.search) as JSON, e.g. '
                       '\'{"trials": 20, "budget_s": 600, "objective": "balanced"}\'')
    train.add_argument("--description", default="")
    train.set_defaults(func=_train)
    imp = sub.add_parser("import", help="import an AdapterHub or PEFT directory (or an archive "
                         "of one, or a weights file) into ADAPTERS_DIR")
    imp.add_argument("--name", required=True, help="adapter name")
    imp.add_argument("path", help="the directory, .zip/.tar.gz or .safetensors file")
    imp.set_defaults(func=_import)
    jobs = sub.add_parser("jobs", help="list a server's training jobs (JSON)")
    jobs.add_argument("--status", choices=["queued", "running", "succeeded", "failed",
                                           "cancelled"])
    jobs.add_argument("--limit", type=int, default=100)
    _client_options(jobs)
    predict = sub.add_parser("predict", help="predict with a server's adapter (JSON)")
    predict.add_argument("task", help="adapter name")
    predict.add_argument("text", nargs="+", help="one or more texts")
    predict.add_argument("--version", type=int, help="adapter version (default: the newest)")
    predict.add_argument("--explain", action="store_true",
                         help="add per-word attributions (integrated gradients)")
    predict.add_argument("--explain-steps", type=int, default=16,
                         help="integration steps to start with (default 16)")
    predict.add_argument("--explain-label", help="explain this label, not the predicted one")
    _client_options(predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
