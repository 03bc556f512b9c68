"""API keys -> `Principal`: who is calling, as a typed FastAPI dependency.

Keys come from `ServerSettings` (`--api-key`, env `TUNEFORGE_API_KEYS`, and a JSON keys file
mapping key -> organization). With no key configured, auth is off and every request is
`Principal("default")`. Admin keys (`TUNEFORGE_ADMIN_KEYS`) are keys of organization
"default" that also carry the operator's rights (`Principal.admin`): deleting folders of the
model store, which belong to no organization. No request is admin when auth is off: an open
server is one a stray web page or a neighbour on the network might reach. Keys are compared in constant time against every configured key, so
the response time does not reveal which (or how much of a) key matched.

Routes take `CurrentPrincipal` as a parameter; organisations scope what a caller sees (a
fine-tune registered with `org="org-a"` is listed and served only to org-a's keys).

Example:
    >>> @router.get("/v1/things")
    ... def list_things(principal: CurrentPrincipal) -> ...:
    ...     return store.list(org=principal.org_id)
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from tuneforge.server.errors import APIError


@dataclass(frozen=True)
class Principal:
    """The caller: an organization, the id of the key used (None when auth is off), and
    whether that key is an admin (operator) key."""

    org_id: str
    key_id: str | None = None
    admin: bool = False


class KeyTable:
    """Configured API keys, checked in constant time."""

    def __init__(self, keys: dict[str, str], admin_keys: Iterable[str] = ()) -> None:
        admins = set(admin_keys)
        # Compare digests so every comparison takes the same time whatever the key lengths.
        self._entries = [
            (hashlib.sha256(key.encode()).digest(), org, _key_id(key), key in admins)
            for key, org in {**keys, **dict.fromkeys(admins - keys.keys(), "default")}.items()
        ]

    @property
    def enabled(self) -> bool:
        return bool(self._entries)

    def check(self, presented: str) -> Principal | None:
        digest = hashlib.sha256(presented.encode()).digest()
        found: Principal | None = None
        for expected, org, key_id, admin in self._entries:  # no early exit: constant time
            if hmac.compare_digest(digest, expected):
                found = Principal(org, key_id, admin)
        return found


def _key_id(key: str) -> str:
    """A stable public id for a key (never the key itself)."""
    return "key_" + hashlib.sha256(key.encode()).hexdigest()[:12]


def authenticate(request: Request, table: KeyTable) -> Principal:
    """The Principal for `request`, or a 401 APIError."""
    if not table.enabled:
        return Principal("default")
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise APIError(
            401,
            "You didn't provide an API key. Provide it in the Authorization header "
            "(Authorization: Bearer YOUR_KEY).",
            code="invalid_api_key",
        )
    principal = table.check(token.strip())
    if principal is None:
        raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")
    return principal


def get_principal(request: Request) -> Principal:
    """FastAPI dependency: authenticate with the app's key table (`app.state.keys`)."""
    return authenticate(request, request.app.state.keys)


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]
