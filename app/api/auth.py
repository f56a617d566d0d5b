"""API keys with scopes: who may call what. Off (everything open) when no key is configured."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.config import Settings
from app.errors import ForbiddenError, NotReadyError, UnauthorizedError


class Scope(str, Enum):
    PREDICT = "predict"  # inference and reading: predictions, adapter and job listings
    ADMIN = "admin"  # changes: train, import, delete, reload, cancel; implies predict

    def allows(self, needed: Scope) -> bool:
        return self is Scope.ADMIN or self is needed


class KeyConfigError(ValueError):
    """API_KEYS or API_KEYS_FILE is malformed; the message never contains a key."""


@dataclass(frozen=True)
class KeyRing:
    """The configured keys, kept as SHA-256 digests: compared in constant time, never logged."""

    digests: tuple[tuple[bytes, Scope], ...]

    @property
    def enabled(self) -> bool:
        return bool(self.digests)

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        entries = parse_keys(settings.api_keys, "API_KEYS")
        if settings.api_keys_file is not None:
            try:
                text = Path(settings.api_keys_file).read_text()
            except OSError as exc:
                raise KeyConfigError(f"API_KEYS_FILE cannot be read: {exc.strerror}") from exc
            lines = [ln.strip() for ln in text.splitlines()]
            entries += parse_keys(",".join(ln for ln in lines if ln and not ln.startswith("#")),
                                  "API_KEYS_FILE")
        return cls(tuple((_digest(key), scope) for key, scope in entries))

    def scope_of(self, key: str) -> Scope | None:
        """The scope of `key`, or None. Every configured key is compared, so the time taken
        says nothing about which key (or how much of one) matched."""
        digest, found = _digest(key), None
        for known, scope in self.digests:
            if hmac.compare_digest(digest, known) and (found is None or scope is Scope.ADMIN):
                found = scope
        return found


def parse_keys(text: str, source: str) -> list[tuple[str, Scope]]:
    """`key:scope` pairs separated by commas (or newlines in a file)."""
    entries = []
    for n, item in enumerate((x.strip() for x in text.split(",")), start=1):
        if not item:
            continue
        key, sep, scope = item.rpartition(":")
        if not sep or not key.strip():
            raise KeyConfigError(f"{source} entry {n} is not 'key:scope'")
        if scope.strip() not in {s.value for s in Scope}:
            raise KeyConfigError(f"{source} entry {n} has scope {scope.strip()!r}; "
                                 f"use 'predict' or 'admin'")
        if any(c.isspace() for c in key.strip()):
            raise KeyConfigError(f"{source} entry {n}: a key cannot contain spaces")
        entries.append((key.strip(), Scope(scope.strip())))
    return entries


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


_bearer = HTTPBearer(auto_error=False, description="An API key from API_KEYS / API_KEYS_FILE.")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def check_key(request: Request, credentials: HTTPAuthorizationCredentials | None,
              needed: Scope) -> None:
    """Raise unless the request may use an endpoint of the `needed` scope."""
    keys: KeyRing | None = getattr(request.app.state, "keys", None)
    if keys is None:
        raise NotReadyError("the service is starting")
    if not keys.enabled:
        return
    if credentials is None:
        raise UnauthorizedError("this endpoint needs an API key: send "
                                "'Authorization: Bearer <key>'")
    scope = keys.scope_of(credentials.credentials)
    if scope is None:
        raise UnauthorizedError("the API key is not valid")
    if not scope.allows(needed):
        raise ForbiddenError(f"this endpoint needs a key with the {needed.value!r} scope; "
                             f"the key given has {scope.value!r}")


def require(needed: Scope) -> Any:
    """A dependency that lets the request through only with a key of the `needed` scope."""

    def check(request: Request, credentials: Credentials) -> None:
        check_key(request, credentials, needed)

    return Depends(check)


PredictScope = require(Scope.PREDICT)
AdminScope = require(Scope.ADMIN)
