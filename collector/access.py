"""Who is asking, and what they may see: the `Principal` of a read-side request.

The auth gate of the read side (`collector.app.operator_only`) resolves the request's
credentials to a Principal and puts it in ``request.state.principal``; every handler
asks `principal_of(request)` and narrows what it reads with it:

- `Principal.restrict(query)`: a bundle (or incident) query limited to the sites the
  principal may see (`Query.sites`; None is every site);
- `Principal.sees(site)`: one record's site, for the per-bundle endpoints (a record out of
  reach answers 404, the same as one that does not exist: nothing tells it exists).

Roles (issue 15): ``admin`` (users, devices, settings; every tenant), ``support`` (the
bundles and incidents of the tenants they serve), ``merchant`` (read-only, their own
tenant's sites).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from collector.storage.base import Query


class Role(StrEnum):
    ADMIN = "admin"
    SUPPORT = "support"
    MERCHANT = "merchant"


@dataclass(frozen=True)
class Principal:
    """A person or script on the read side, with the sites in their reach."""

    name: str
    role: Role
    sites: frozenset[str] | None = None  # None: every site (and bundles under no site)
    user_id: int | None = None  # the account's id (None: not an account, e.g. a test)
    via: str = "open"  # how they proved it: "session", "token" ("open": no credentials)
    language: str = ""  # the user's own language for the pages ('' follows the browser)

    def restrict(self, q: Query) -> Query:
        """q limited to this principal's sites (intersected with any restriction q had)."""
        if self.sites is None:
            return q
        sites = self.sites if q.sites is None else self.sites & q.sites
        return dataclasses.replace(q, sites=frozenset(sites))

    def sees(self, site: str) -> bool:
        """True when a record filed under site is within reach."""
        return self.sites is None or site in self.sites

    @property
    def writes(self) -> bool:
        """May change incidents and holds (admin and support); merchants only read."""
        return self.role in (Role.ADMIN, Role.SUPPORT)

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


def principal_of(request: Any) -> Principal:
    """The principal the auth gate resolved for this request.

    Fails closed: a handler reached without the gate (a routing mistake) raises
    LookupError, which the app answers with 500, never with everything."""
    found = getattr(request.state, "principal", None)
    if not isinstance(found, Principal):
        raise LookupError("no principal: the read-side handler was reached without its gate")
    return found
