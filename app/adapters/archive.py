"""Archives of adapter directories (.zip, .tar.gz): told apart from a weights file, unpacked
safely, and written for export."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from collections.abc import Callable
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Literal

from app.errors import InvalidAdapterError, PayloadTooLargeError

ArchiveKind = Literal["zip", "gzip"]
ZIP_TYPES = ("application/zip", "application/x-zip-compressed")
GZIP_TYPES = ("application/gzip", "application/x-gzip", "application/x-tar",
              "application/x-gtar", "application/x-compressed-tar")
MAX_MEMBERS = 64  # an adapter directory holds a handful of files


def archive_kind(data: bytes, content_type: str | None = None) -> ArchiveKind | None:
    """"zip" or "gzip" when `data` is an archive (by its content type, else its first bytes)."""
    mime = (content_type or "").split(";")[0].strip().lower()
    # A safetensors file has its JSON header from byte 8 on; neither archive has "{" there.
    weights = data[8:9] == b"{"
    if mime in ZIP_TYPES or (data[:4] == b"PK\x03\x04" and not weights):
        return "zip"
    if mime in GZIP_TYPES or (data[:2] == b"\x1f\x8b" and not weights):
        return "gzip"
    return None


def _safe_name(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise InvalidAdapterError(f"the archive holds an unsafe path {name!r}")
    return path


def unpack(data: bytes, kind: ArchiveKind, dest: Path, max_bytes: int) -> Path:
    """Extract regular files into `dest` (nothing else: no links, devices or paths outside it)
    with at most `max_bytes` in all; returns the directory that holds the adapter's files: the
    archive's root, or its one top-level folder."""
    files: dict[PurePosixPath, bytes] = {}
    total = 0

    def add(name: str, size: int, read: Callable[[], bytes]) -> None:
        """One member, checked before it is read (its size as the archive states it)."""
        nonlocal total
        total += size
        if total > max_bytes:
            raise PayloadTooLargeError(f"the archive unpacks to more than {max_bytes} bytes "
                                       f"(MAX_ADAPTER_BYTES)")
        if len(files) >= MAX_MEMBERS:
            raise InvalidAdapterError(f"the archive holds more than {MAX_MEMBERS} files; an "
                                      f"adapter directory has a few")
        content = read()
        if len(content) != size:
            raise InvalidAdapterError(f"archive member {name!r} is not the size it states")
        files[_safe_name(name)] = content

    try:
        if kind == "zip":
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                for info in z.infolist():
                    kind_bits = stat.S_IFMT(info.external_attr >> 16)  # 0: not recorded
                    if info.is_dir() or kind_bits not in (0, stat.S_IFREG):
                        continue  # folders come from the paths; links are never followed
                    add(info.filename, info.file_size, partial(z.read, info))
        else:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as t:
                for member in t.getmembers():
                    if not member.isfile():
                        continue
                    handle = t.extractfile(member)
                    if handle is not None:
                        add(member.name, member.size, handle.read)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise InvalidAdapterError(f"the upload is not a readable {kind} archive ({exc})") from exc
    if not files:
        raise InvalidAdapterError("the archive holds no files")
    for path, content in files.items():
        target = dest.joinpath(*path.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    tops = {p.parts[0] for p in files}
    if len(tops) == 1 and all(len(p.parts) > 1 for p in files):
        return dest / tops.pop()  # everything inside one folder
    return dest


def pack_zip(files: dict[str, bytes], folder: str) -> bytes:
    """A zip of `files` inside one folder named `folder`."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, content in sorted(files.items()):
            z.writestr(f"{folder}/{name}", content)
    return out.getvalue()
