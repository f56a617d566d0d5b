"""Archives of adapter directories: told apart from weights files, unpacked safely, packed."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from app.adapters.archive import archive_kind, pack_zip, unpack
from app.errors import InvalidAdapterError, PayloadTooLargeError


def _zip(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, content in files.items():
            z.writestr(name, content)
    return out.getvalue()


def _tgz(files: dict[str, bytes], link: str | None = None) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as t:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            t.addfile(info, io.BytesIO(content))
        if link:
            info = tarfile.TarInfo(link)
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            t.addfile(info)
    return out.getvalue()


def test_kinds_by_content_type_or_bytes() -> None:
    files = {"adapter_config.json": b"{}"}
    assert archive_kind(_zip(files)) == "zip" and archive_kind(_tgz(files)) == "gzip"
    assert archive_kind(b"xx", "application/zip") == "zip"
    assert archive_kind(b"xx", "application/gzip; charset=binary") == "gzip"
    weights = (35615).to_bytes(8, "little") + b'{"__metadata__": {}}'  # starts 1f 8b, JSON at 8
    assert weights[:2] == b"\x1f\x8b" and archive_kind(weights) is None


@pytest.mark.parametrize("pack", [_zip, _tgz])
def test_files_at_the_root_or_inside_one_folder(pack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = unpack(pack({"adapter_config.json": b"{}", "w.bin": b"1"}), archive_kind(
        pack({"a": b""})) or "zip", tmp_path / "a", 1000)
    assert root == tmp_path / "a" and (root / "w.bin").read_bytes() == b"1"
    inner = unpack(pack({"sst2/adapter_config.json": b"{}", "sst2/w.bin": b"2"}),
                   archive_kind(pack({"a": b""})) or "zip", tmp_path / "b", 1000)
    assert inner == tmp_path / "b" / "sst2" and (inner / "w.bin").read_bytes() == b"2"


@pytest.mark.parametrize(("data", "error", "message"), [
    (_zip({"../evil": b"x"}), InvalidAdapterError, "unsafe path '../evil'"),
    (_tgz({"/etc/evil": b"x"}), InvalidAdapterError, "unsafe path '/etc/evil'"),
    (_zip({"big": b"x" * 2000}), PayloadTooLargeError, "unpacks to more than 1000 bytes"),
    (_zip({}), InvalidAdapterError, "holds no files"),
    (_zip({f"f{i}": b"" for i in range(65)}), InvalidAdapterError, "more than 64 files"),
    (b"PK\x03\x04 not really", InvalidAdapterError, "not a readable zip archive"),
])
def test_unsafe_or_broken_archives_are_refused(data: bytes, error: type, message: str,
                                               tmp_path: Path) -> None:
    with pytest.raises(error, match=message):
        unpack(data, archive_kind(data) or "zip", tmp_path, 1000)
    assert not (tmp_path.parent / "evil").exists()


def test_links_are_never_extracted(tmp_path: Path) -> None:
    root = unpack(_tgz({"adapter_config.json": b"{}"}, link="passwd"), "gzip", tmp_path, 1000)
    assert sorted(p.name for p in root.iterdir()) == ["adapter_config.json"]


def test_pack_puts_files_in_one_folder() -> None:
    with zipfile.ZipFile(io.BytesIO(pack_zip({"b": b"2", "a": b"1"}, "x-v1-peft"))) as z:
        assert z.namelist() == ["x-v1-peft/a", "x-v1-peft/b"]
