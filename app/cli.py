"""The `adapter-serve` command: serve, or train an adapter offline into the store."""

from __future__ import annotations

import argparse
import sys

from app.config import get_settings
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


def _train(args: argparse.Namespace) -> int:
    """Train offline into the store (the same code as POST /adapters, without the server)."""
    import json
    import logging
    import os
    from pathlib import Path

    import torch

    from app.adapters.store import AdapterStore, validate_name
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
        config = TrainConfig(**json.loads(args.config_json or "{}"))
        train = parse_file(Path(args.data).read_bytes(), args.data, "train")
        validation = (parse_file(Path(args.validation).read_bytes(), args.validation, "validation")
                      if args.validation else None)
        labels = [x.strip() for x in args.labels.split(",")] if args.labels else None
        data = prepare(args.task_type, train, validation, labels, config.validation_fraction,
                       config.seed, settings.max_train_rows, settings.max_text_chars)
        encoder = FrozenEncoder.load(settings.base_model, settings.device, "float32",
                                     settings.max_seq_length)
        stored, result = train_and_store(
            encoder, AdapterStore(settings.adapters_dir), args.name, data, config,
            args.description,
            on_epoch=lambda r: print(json.dumps(r), file=sys.stderr, flush=True))
    except ServiceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"name": stored.name, "version": stored.version,
                      "best_epoch": result.best_epoch, "metrics": result.best_metrics,
                      "train_seconds": round(result.train_seconds, 1),
                      "examples_per_second": round(result.examples_per_second, 1),
                      "path": str(settings.adapters_dir / stored.name / f"v{stored.version}")}))
    return 0


def _import(args: argparse.Namespace) -> int:
    """Import into the store offline: a directory saved by AdapterHub or PEFT, an archive of
    one, or this service's weights file (the same checks as PUT /adapters/{name})."""
    import json
    import tempfile
    from pathlib import Path

    from app.adapters import interop
    from app.adapters.archive import archive_kind, unpack
    from app.adapters.store import AdapterStore, validate_name
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
        stored = AdapterStore(settings.adapters_dir).import_bytes(args.name, data, encoder.info)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adapter-serve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP service (settings from the environment)")
    serve.add_argument("--host", help="bind address (default: HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: PORT or 8000)")
    serve.set_defaults(func=_serve)
    train = sub.add_parser("train", help="train an adapter offline into ADAPTERS_DIR")
    train.add_argument("--name", required=True, help="adapter name")
    train.add_argument("--data", required=True, help="training rows: JSONL or CSV")
    train.add_argument("--task-type", default=TASK_TYPES[0], choices=TASK_TYPES)
    train.add_argument("--labels", help="comma-separated class names (default: from the data)")
    train.add_argument("--validation", help="validation rows (default: a split of --data)")
    train.add_argument("--config-json", help='TrainConfig as JSON, e.g. \'{"epochs": 3}\'')
    train.add_argument("--description", default="")
    train.set_defaults(func=_train)
    imp = sub.add_parser("import", help="import an AdapterHub or PEFT directory (or an archive "
                         "of one, or a weights file) into ADAPTERS_DIR")
    imp.add_argument("--name", required=True, help="adapter name")
    imp.add_argument("path", help="the directory, .zip/.tar.gz or .safetensors file")
    imp.set_defaults(func=_import)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
