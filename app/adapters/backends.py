"""The adapter store's backends, and the one place that picks one from ADAPTERS_DIR."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from app.adapters.storage import Store
from app.adapters.store import AdapterStore
from app.errors import StoreUnavailableError

Opener = Callable[[str, Path], Store]  # (ADAPTERS_DIR, ADAPTER_CACHE_DIR) -> the store


def _s3(location: str, cache_dir: Path) -> Store:
    try:  # boto3 is an extra: imported only by a service whose store is on S3
        from app.adapters.s3.store import S3Store
    except ModuleNotFoundError as exc:
        if exc.name not in ("boto3", "botocore"):
            raise
        raise StoreUnavailableError(
            f"ADAPTERS_DIR={location} needs boto3, which is not installed: "
            f"pip install 'adapter-serve[s3]'") from exc
    return S3Store(location, cache_dir)


# URL scheme -> backend; a location without "://" is a local directory.
BACKENDS: dict[str, Opener] = {"s3": _s3}


def open_store(location: str, cache_dir: Path) -> Store:
    """The store that ADAPTERS_DIR names: a local directory, or a URL such as s3://bucket/prefix
    (its node-local files under `cache_dir`). Nothing is read yet: `Store.open()` checks it."""
    scheme, sep, _ = location.partition("://")
    if not sep:
        return AdapterStore(Path(location))
    opener = BACKENDS.get(scheme.lower())
    if opener is None:
        raise StoreUnavailableError(
            f"ADAPTERS_DIR={location}: no adapter store for {scheme}:// URLs (use a local "
            f"directory or one of {', '.join(f'{s}://' for s in sorted(BACKENDS))})")
    return opener(location, cache_dir)
