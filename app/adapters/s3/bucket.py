"""A prefix of an S3-compatible bucket, through boto3: the few calls the store makes, writes that
only create (If-None-Match: *), and every failure turned into a domain error naming the store.

The endpoint, region and credentials come from boto3's standard sources: AWS_ENDPOINT_URL (for
MinIO or Ceph RGW), AWS_REGION, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a profile, or an
instance role. A custom endpoint is addressed path-style (http://host:9000/bucket/key).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from app.errors import StoreUnavailableError, StoreWriteError

CONNECT_TIMEOUT_S = 5  # an endpoint that does not answer fails a load soon (503), not in minutes
READ_TIMEOUT_S = 60
CONNECTIONS = 16  # one per thread of a full sync's reads
CONFLICT_RETRIES = 5  # AWS answers 409 to a create racing another one on the same key: try again
NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
DENIED = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}


@dataclass(frozen=True)
class Listed:
    """One object, as a listing (or a read) describes it."""

    key: str  # below the prefix
    size: int
    modified_ns: int  # in whole seconds, the resolution every S3 keeps
    etag: str  # changes whenever the object is written again

    @property
    def written_ns(self) -> int:
        """When it was written, the ETag's fingerprint below the second: it changes when the
        object is rewritten, even within the second."""
        digest = hashlib.sha256(self.etag.strip('"').encode()).digest()
        return self.modified_ns + int.from_bytes(digest[:8], "big") % 1_000_000_000


def whole_seconds_ns(when: datetime) -> int:
    """A Last-Modified time as nanoseconds, cut to whole seconds: listings of some services give
    milliseconds where their headers give seconds, and the two must compare equal."""
    return int(when.timestamp()) * 1_000_000_000


class Bucket:
    """`s3://bucket/prefix`: keys below are relative to the prefix."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme.lower() != "s3" or not parts.netloc or parts.query or parts.fragment:
            raise StoreUnavailableError(
                f"ADAPTERS_DIR={url}: expected s3://bucket or s3://bucket/prefix")
        self.url = url
        self.name = parts.netloc
        self.prefix = parts.path.strip("/")
        self.client: Any = boto3.session.Session().client("s3", config=Config(
            connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S,
            max_pool_connections=CONNECTIONS))

    @property
    def where(self) -> str:
        return f"adapter store {self.url} (endpoint {self.client.meta.endpoint_url})"

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def url_of(self, key: str) -> str:
        return f"s3://{self.name}/{self._key(key)}"

    def check(self) -> None:
        """Raise StoreUnavailableError, naming the store, unless the bucket answers."""
        with self._failures("reach the bucket"):
            self.client.head_bucket(Bucket=self.name)

    def get(self, key: str) -> tuple[bytes, Listed] | None:
        """The object's bytes and what a listing would say of it; None when absent."""
        with self._failures(f"read {key}"):
            try:
                found = self.client.get_object(Bucket=self.name, Key=self._key(key))
                data = found["Body"].read()
                return data, Listed(key, len(data), whole_seconds_ns(found["LastModified"]),
                                    str(found.get("ETag", "")))
            except ClientError as exc:
                if _code(exc) in NOT_FOUND:
                    return None
                raise

    def create(self, key: str, data: bytes) -> bool:
        """Write a new object; False when `key` exists already (another writer made it)."""
        attempts = 0
        with self._failures(f"write {key}", writing=True):
            while True:
                attempts += 1
                try:
                    self.client.put_object(Bucket=self.name, Key=self._key(key), Body=data,
                                           IfNoneMatch="*")
                    return True
                except ClientError as exc:
                    code = _code(exc)
                    if code == "PreconditionFailed":
                        return False
                    if code != "ConditionalRequestConflict" or attempts == CONFLICT_RETRIES:
                        raise

    def delete(self, key: str) -> None:
        with self._failures(f"delete {key}", writing=True):
            self.client.delete_object(Bucket=self.name, Key=self._key(key))

    def list(self, under: str = "", start_after: str = "") -> Iterator[Listed]:
        """Objects whose keys start with `under`, in key order, after `start_after` if given:
        one request per 1,000 objects."""
        options = {"Bucket": self.name, "Prefix": self._key(under)}
        if start_after:
            options["StartAfter"] = self._key(start_after)
        cut = len(self._key(""))
        with self._failures(f"list {under or 'the store'}"):
            for page in self.client.get_paginator("list_objects_v2").paginate(**options):
                for item in page.get("Contents", []):
                    yield Listed(item["Key"][cut:], int(item["Size"]),
                                 whole_seconds_ns(item["LastModified"]), str(item.get("ETag", "")))

    @contextlib.contextmanager
    def _failures(self, doing: str, writing: bool = False) -> Iterator[None]:
        try:
            yield
        except ClientError as exc:
            self._raise(exc, doing, writing)
        except BotoCoreError as exc:  # no connection, a timeout, no credentials
            raise StoreUnavailableError(f"{self.where}: cannot {doing}: {exc}") from exc

    def _raise(self, exc: ClientError, doing: str, writing: bool) -> NoReturn:
        code = _code(exc)
        message = exc.response.get("Error", {}).get("Message") or code
        if code == "NoSuchBucket" or (doing == "reach the bucket" and code in NOT_FOUND):
            raise StoreUnavailableError(
                f"{self.where}: the bucket {self.name!r} does not exist") from exc
        if code == "NotImplemented":
            raise StoreUnavailableError(
                f"{self.where}: cannot {doing}: the service does not support what the store "
                f"needs (conditional writes, If-None-Match: *): {message}") from exc
        if code in DENIED:
            error = StoreWriteError if writing else StoreUnavailableError
            raise error(f"{self.where}: cannot {doing}: access denied ({code})") from exc
        raise StoreUnavailableError(f"{self.where}: cannot {doing}: {code}: {message}") from exc


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
