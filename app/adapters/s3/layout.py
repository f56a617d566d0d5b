"""Where the store's objects lie below the prefix, what a manifest holds, and what a listing says
of each version.

    <name>/v<N>/adapter.safetensors   the weights; creating it claims the number N
    <name>/v<N>/manifest.json         created last: the version exists from then on
    <name>/v<N>/deleted               created by a delete: the version is gone, N never reused
    _changes/<seq>.json               the change log (app.adapters.s3.changelog)

`_changes` cannot be an adapter name: names start with a letter or a digit.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from app.adapters import format as fmt
from app.adapters.format import AdapterMetadata
from app.adapters.index import Key, Stamp
from app.adapters.s3.bucket import Listed
from app.constants import NAME_RE, VERSION_DIR_PREFIX, WEIGHTS_FILE
from app.errors import InvalidAdapterError

WEIGHTS = WEIGHTS_FILE
MANIFEST = "manifest.json"
TOMBSTONE = "deleted"
CHANGES = "_changes/"
MANIFEST_FORMAT = 1


def version_key(key: Key, part: str = "") -> str:
    """The key of one object of a version (`part`), or of its folder."""
    return f"{key[0]}/{VERSION_DIR_PREFIX}{key[1]}/{part}"


def parse_version_key(key: str) -> tuple[Key, str] | None:
    """(the version, the part) an object belongs to; None for any other key."""
    name, _, rest = key.partition("/")
    folder, _, part = rest.partition("/")
    number = folder[len(VERSION_DIR_PREFIX):]
    if not (NAME_RE.match(name) and folder.startswith(VERSION_DIR_PREFIX) and number.isdigit()
            and part) or "/" in part:
        return None
    return (name, int(number)), part


def manifest(meta: AdapterMetadata, size: int) -> bytes:
    """The marker of a stored version: its metadata, the weights' sha256 and size."""
    return json.dumps({"format": MANIFEST_FORMAT, "sha256": meta.weights_sha256, "size": size,
                       "metadata": meta.model_dump(mode="json")}, indent=2).encode()


def parse_manifest(raw: bytes, source: str) -> tuple[AdapterMetadata, int]:
    """(the metadata, the weights' size) of a manifest; InvalidAdapterError when malformed."""
    try:
        found = json.loads(raw)
        fields = found["format"], found["sha256"], found["size"], found["metadata"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise InvalidAdapterError(f"{source}: {MANIFEST} is malformed ({exc!r})") from exc
    if not isinstance(fields[0], int) or fields[0] > MANIFEST_FORMAT:
        raise InvalidAdapterError(f"{source}: {MANIFEST} format {fields[0]!r} is newer than "
                                  f"this service understands ({MANIFEST_FORMAT})")
    meta = fmt.parse_metadata(fields[3], source)
    if fields[1] != meta.weights_sha256 or not isinstance(fields[2], int):
        raise InvalidAdapterError(f"{source}: {MANIFEST} contradicts itself (sha256 or size)")
    return meta, fields[2]


@dataclass
class VersionObjects:
    """What a listing shows of one version."""

    weights: Listed | None = None
    manifest: Listed | None = None
    deleted: Listed | None = None

    @property
    def visible(self) -> bool:
        return self.manifest is not None and self.weights is not None and self.deleted is None

    @property
    def stamp(self) -> Stamp:
        """When the manifest was written, and the weights' size: what a manifest read gives."""
        assert self.manifest is not None and self.weights is not None
        return self.manifest.written_ns, self.weights.size

    def leftovers(self, written_before_ns: int) -> list[str]:
        """Parts a writer or deleter that died left: a deleted version's manifest and weights,
        weights without a manifest written before `written_before_ns` (their writer is gone)."""
        if self.deleted is not None:
            return [part for part, obj in ((MANIFEST, self.manifest), (WEIGHTS, self.weights))
                    if obj is not None]
        weights = self.weights
        if self.manifest is None and weights is not None and weights.modified_ns < written_before_ns:
            return [WEIGHTS]
        return []


PARTS = {WEIGHTS: "weights", MANIFEST: "manifest", TOMBSTONE: "deleted"}


def versions_listed(listed: Iterable[Listed]) -> dict[Key, VersionObjects]:
    """Every version a listing shows objects of, visible or not."""
    found: dict[Key, VersionObjects] = {}
    for item in listed:
        parsed = parse_version_key(item.key)
        if parsed is not None and parsed[1] in PARTS:
            setattr(found.setdefault(parsed[0], VersionObjects()), PARTS[parsed[1]], item)
    return found
