"""Placing a device: its token in tokens_file (`collector.auth.add_device`), its site in a
tenant (a ``sites`` row), and the audit entry, in one database transaction.

The device's token and registered site stay in tokens_file for now (ingest files its
bundles under that site); the tenant owning the site is a database row, so a merchant
sees the device's bundles once its site belongs to their tenant. The tokens file is
written inside the transaction: a refused placement (a site of another tenant, a bad
name) leaves both unchanged; a failed file write rolls the rows back.
"""

from __future__ import annotations

from collector import audit
from collector.access import Principal
from collector.accounts.errors import InvalidAccount
from collector.accounts.users import place_site
from collector.auth import add_device
from collector.storage.sql import Database


def place_device(
    db: Database,
    tokens_file: str,
    device_id: str,
    *,
    site: str | None,
    tenant: str = "",
    rotate: bool = False,
    actor: Principal | str,
    address: str,
) -> str:
    """Register (or with rotate, re-key) a device; its new token, shown once.

    ValueError (bad id or site), FileExistsError (registered, no rotate), InvalidAccount /
    AccountExists (tenant rules), TokenFileError, OSError, StorageError."""
    if tenant and not site:
        raise InvalidAccount("a device belongs to a tenant through its site: give --site too")
    with db.transaction() as tx:
        if tenant and site:
            place_site(tx, site, tenant)
        token = add_device(tokens_file, device_id, rotate=rotate, site=site)
        audit.record(
            tx,
            actor,
            "device.rotate" if rotate else "device.add",
            device_id,
            address,
            {"site": site, "tenant": tenant or None},
        )
    return token
