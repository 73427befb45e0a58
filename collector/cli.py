"""`posagent collector serve|add-device|user|token|migrate|hold|retention|migrate-store|
revoke-key|reindex|keygen|enroll-token|remote-config`, run by agent/commands/collector.py.

Exit codes (agent.core.exits): 0 done; 64 a refused name, role, tenant or weak password;
65 a malformed tokens file; 66 no such user or token; 69 the store unreachable; 73 the
user or device exists, or tokens_file cannot be written; 78 the config or schema."""

from __future__ import annotations

import argparse
import json
import signal
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import structlog

from agent.bundle.sealed import KeyFileError, load_identities
from agent.core import log as agent_log
from agent.core.config import load_config
from agent.core.exits import (
    EX_CANTCREAT,
    EX_CONFIG,
    EX_DATAERR,
    EX_FAIL,
    EX_NOINPUT,
    EX_OK,
    EX_UNAVAILABLE,
    EX_USAGE,
)
from agent.core.redact import Redactor
from agent.core.timefmt import rfc3339
from collector import audit
from collector.accounts import passwords, tokens, users
from collector.accounts.devices import place_device
from collector.accounts.errors import (
    AccountError,
    AccountExists,
    NoSuchAccount,
)
from collector.auth import TokenFileError
from collector.channel import devices as channel_devices
from collector.channel import enroll
from collector.channel import remote_config as rc
from collector.channel.hooks import cli_actor
from collector.channel.signing import keygen
from collector.config import CollectorConfig, load_collector_config
from collector.storage import (
    BundleStore,
    SchemaError,
    StorageError,
    migrate_store,
    open_store,
)
from collector.storage.copy import copy_store, verify_store
from collector.storage.retention import (
    RetentionPolicy,
    parse_hold_target,
    retention_index,
    run_retention,
)
from collector.storage.sql import database
from collector.storage.tables import (
    NOT_COPIED,
    TableConflict,
    TablesReport,
    check_tables,
    copy_tables,
)


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")


def run(args: argparse.Namespace) -> int:
    """Dispatch `posagent collector ACTION`."""
    if args.collector_cmd == "serve":
        return cmd_serve(args)
    if args.collector_cmd == "add-device":
        return cmd_add_device(args)
    if args.collector_cmd == "user":
        return cmd_user(args)
    if args.collector_cmd == "token":
        return cmd_token(args)
    if args.collector_cmd == "migrate":
        return cmd_migrate(args)
    if args.collector_cmd == "hold":
        return cmd_hold(args)
    if args.collector_cmd == "retention":
        return cmd_retention(args)
    if args.collector_cmd == "migrate-store":
        return cmd_migrate_store(args)
    if args.collector_cmd == "revoke-key":
        return cmd_revoke_key(args)
    if args.collector_cmd == "reindex":
        return cmd_reindex(args)
    if args.collector_cmd == "keygen":
        return cmd_keygen(args)
    if args.collector_cmd == "enroll-token":
        return cmd_enroll_token(args)
    if args.collector_cmd == "remote-config":
        return cmd_remote_config(args)
    return EX_USAGE


def _open(ccfg: CollectorConfig, what: str) -> BundleStore | int:
    """The configured store, or the exit code after saying why not."""
    try:
        return open_store(ccfg)
    except SchemaError as e:
        _err(f"posagent collector {what}: {e}")
        return EX_CONFIG
    except StorageError as e:
        _err(f"posagent collector {what}: {e}")
        return EX_UNAVAILABLE


def _on_store(ccfg: CollectorConfig, what: str, work: Callable[[BundleStore], int]) -> int:
    """work(store) on the configured store, closed after; its exit code. A store that
    cannot be opened is 78 (schema) or 69; a StorageError during the work is 69, said in
    one line as `posagent collector WHAT: why`."""
    store = _open(ccfg, what)
    if isinstance(store, int):
        return store
    try:
        return work(store)
    except StorageError as e:
        _err(f"posagent collector {what}: {e}")
        return EX_UNAVAILABLE
    finally:
        store.close()


def cmd_hold(args: argparse.Namespace) -> int:
    """`collector hold add|remove|list`: legal holds in the index (every instance sees them)."""
    return _on_store(load_collector_config(args.config), "hold", lambda st: _hold(args, st))


def _hold(args: argparse.Namespace, store: BundleStore) -> int:
    idx = retention_index(store)
    if args.hold_cmd == "list":
        holds = idx.holds()
        if args.json:
            sys.stdout.write(json.dumps([h.to_dict() for h in holds], indent=2) + "\n")
        else:
            for h in holds:
                sys.stdout.write(f"{h.scope}\t{h.value}\t{rfc3339(h.created_at)}\t{h.reason}\n")
            _err(f"{len(holds)} hold(s)")
        return EX_OK
    try:
        scope, value = parse_hold_target(
            {"bundle": args.bundle, "device": args.device, "site": args.site}
        )
    except ValueError as e:
        _err(f"posagent collector hold: {e}")
        return EX_USAGE
    if args.hold_cmd == "add":
        placed = idx.add_hold(scope, value, args.reason.strip())
        sys.stdout.write(f"hold {'placed' if placed else 'updated'}: {scope} {value}\n")
        return EX_OK
    if not idx.remove_hold(scope, value):
        _err(f"posagent collector hold remove: no hold on {scope} {value}")
        return EX_FAIL
    sys.stdout.write(f"hold released: {scope} {value}\n")
    return EX_OK


def cmd_retention(args: argparse.Namespace) -> int:
    """`collector retention run`: one run now; prints the deletions by reason.

    Exit 0 when it ran (or another instance was running it), 1 when some blobs could not
    be deleted (left for the next run), 69 when the store is unreachable.
    """
    ccfg = load_collector_config(args.config)
    r = ccfg.retention
    policy = RetentionPolicy(r.default_days, r.kind_days, r.severity_days)
    return _on_store(ccfg, "retention", lambda st: _retention(st, policy, r.batch_size))


def _retention(store: BundleStore, policy: RetentionPolicy, batch_size: int) -> int:
    report = run_retention(store, policy, batch_size=batch_size)
    if report.skipped:
        sys.stdout.write("another retention run holds the lock: nothing done\n")
        return EX_OK
    if not policy.deletes_anything:
        sys.stdout.write("retention keeps every bundle ([collector.retention] days are 0)\n")
    for reason, n in sorted(report.deleted.items()):
        sys.stdout.write(f"deleted\t{reason}\t{n}\n")
    sys.stdout.write(
        f"deleted {report.total} bundle(s), {report.blobs_deleted} blob(s); "
        f"{report.pending_blobs} blob(s) left for the next run\n"
    )
    for text in report.errors[:10]:
        _err(f"posagent collector retention: {text}")
    return EX_FAIL if report.errors else EX_OK


def _same_index(a: CollectorConfig, b: CollectorConfig) -> bool:
    if a.index_url or b.index_url:
        return a.index_url == b.index_url
    return Path(a.data_dir).resolve() == Path(b.data_dir).resolve()


def cmd_migrate_store(args: argparse.Namespace) -> int:
    """`collector migrate-store`: the store the config names (embedded by default) copied
    into the one the options name (PostgreSQL + S3, or embedded in --to-data-dir): first a
    check that the target holds no conflicting row (nothing written otherwise), then the
    operators' tables (`collector.storage.tables`), then the bundles and their blobs
    (`collector.storage.copy`), then both checked again.

    Resumable; exit 0 only when every source row and bundle is in the target, verified;
    1 when some are not (conflicts named, nothing overwritten); 64 bad options, 66 no
    source index, 69 a store unreachable, 78 a schema.
    """
    ccfg = load_collector_config(args.config)
    target = replace(
        ccfg,
        index_url=args.to_index,
        blob_url=args.to_blob,
        data_dir=args.to_data_dir or ccfg.data_dir,
        s3_endpoint_url=args.s3_endpoint_url,
        s3_region=args.s3_region,
    )
    what = "posagent collector migrate-store"
    if (target.index_url and not target.index_url.startswith(("postgresql://", "postgres://"))) or (
        target.blob_url and not target.blob_url.startswith("s3://")
    ):
        _err(f"{what}: --to-index postgresql://... --to-blob s3://... (or --to-data-dir DIR)")
        return EX_USAGE
    if _same_index(ccfg, target):
        _err(
            f"{what}: the target is the source's own index: give --to-index postgresql://... "
            "--to-blob s3://..., or --to-data-dir DIR for an embedded target"
        )
        return EX_USAGE
    if not ccfg.index_url and not (Path(ccfg.data_dir) / "index.sqlite3").exists():
        _err(f"{what}: no embedded index in {ccfg.data_dir}")
        return EX_NOINPUT
    try:
        migrate_store(target)
    except SchemaError as e:
        _err(f"{what}: {e}")
        return EX_CONFIG
    except StorageError as e:
        _err(f"{what}: {e}")
        return EX_UNAVAILABLE
    src = _open(ccfg, "migrate-store")
    if isinstance(src, int):
        return src
    dst = _open(target, "migrate-store")
    if isinstance(dst, int):
        src.close()
        return dst
    try:
        return _migrate(src, dst, workers=args.workers, bundles_only=args.bundles_only)
    except TableConflict as e:
        _err(f"{what}: the target holds rows the source does not agree with: {e}")
        for text in e.conflicts:
            _err(f"conflict\t{text}")
        _err(
            f"{what}: nothing was overwritten; migrate into a new database (or one only this "
            "command filled), or remove the target's rows named above"
        )
        return EX_FAIL
    except StorageError as e:
        _err(f"{what}: {e}")
        return EX_UNAVAILABLE
    finally:
        src.close()
        dst.close()


def _migrate(src: BundleStore, dst: BundleStore, *, workers: int, bundles_only: bool) -> int:
    """The copy of `cmd_migrate_store` on two open stores (TableConflict, StorageError);
    bundles_only: the bundles alone (while the source still serves)."""
    sdb, ddb = database(src), database(dst)
    if bundles_only:
        tables = TablesReport()
    else:
        found = check_tables(sdb, ddb)
        if found.conflicts:
            raise TableConflict(found.conflicts, found.more)
        tables = copy_tables(sdb, ddb)
    for name in tables.copied:
        sys.stdout.write(
            f"table\t{name}\tcopied {tables.copied[name]}\tskipped {tables.skipped[name]}\n"
        )
    for name, why in NOT_COPIED.items():
        if not bundles_only:
            sys.stdout.write(f"not copied\t{name}\t{why}\n")
    report = copy_store(src, dst, workers=workers)
    missing = verify_store(src, dst)
    again = TablesReport() if bundles_only else check_tables(sdb, ddb)
    sys.stdout.write(
        f"copied {report.copied}, skipped {report.skipped} (already there), "
        f"failed {len(report.failed)}\n"
    )
    for bid, reason in sorted(report.failed.items()):
        sys.stdout.write(f"failed\t{bid}\t{reason}\n")
    lacking = sum(again.missing.values())
    for text in again.conflicts:
        sys.stdout.write(f"conflict\t{text}\n")
    if report.failed or missing or lacking or again.conflicts:
        _err(
            f"posagent collector migrate-store: {len(missing)} bundle(s) and {lacking} row(s) "
            f"not in the target, {len(again.conflicts) + again.more} row(s) changed in the "
            "source since they were copied; run it again after fixing the failures "
            "(stop the source's collector first)"
        )
        return EX_FAIL
    rows = "no table (--bundles-only)" if bundles_only else f"all {tables.rows} row(s)"
    sys.stdout.write(f"{rows} and {report.total} bundle(s) in the target, digests verified\n")
    return EX_OK


def cmd_revoke_key(args: argparse.Namespace) -> int:
    """`collector revoke-key DEVICE KEY_ID`: bundles that key signs are refused from now on.

    The key may be in the device's .pub file or among those it enrolled with or rotated
    to (the ``devices`` table). Exit 0 when revoked, 66 when the key is not on file (the
    ids on file are named), 78 when a key file does not parse, 73 when it cannot be
    written, 69 when the store is unreachable.
    """
    ccfg = load_collector_config(args.config)
    return _on_store(ccfg, "revoke-key", lambda st: _revoke_key(args, ccfg, st))


def _revoke_key(args: argparse.Namespace, ccfg: CollectorConfig, store: BundleStore) -> int:
    # lazy: collector.sealed needs the collector extra (prometheus-client)
    from collector.sealed import revoke_key

    enrolled = channel_devices.pem_of(database(store), args.device_id)
    try:
        block = revoke_key(ccfg, args.device_id, args.key_id, enrolled)
    except LookupError as e:
        _err(f"posagent collector revoke-key: {str(e).strip(chr(39))}")
        return EX_NOINPUT
    except KeyFileError as e:
        _err(f"posagent collector revoke-key: {e}")
        return EX_CONFIG
    except OSError as e:
        _err(f"posagent collector revoke-key: cannot write the key files: {e.strerror or e}")
        return EX_CANTCREAT
    sys.stdout.write(
        f"revoked key {block.key_id} of {args.device_id}: bundles it signs are refused (422) "
        f"from now on; moved to {args.device_id}.revoked in {ccfg.device_pubkeys_dir}\n"
    )
    return EX_OK


def cmd_reindex(args: argparse.Namespace) -> int:
    """`collector reindex --undecryptable`: bundles indexed as undecryptable, opened with
    the identities now in age_identity_file and their index rows filled in.

    Exit 0 when every one was looked at (some may stay undecryptable), 1 when some
    could not be read or verified (logged), 78 for an unusable identity file, 69 when the
    store is unreachable."""
    ccfg = load_collector_config(args.config)
    if not args.undecryptable:
        _err("posagent collector reindex: say what to index again: --undecryptable")
        return EX_USAGE
    bad = _identity_problem(ccfg)
    if bad:
        _err(f"posagent collector reindex: {bad}")
        return EX_CONFIG
    return _on_store(ccfg, "reindex", lambda st: _reindex(ccfg, st))


def _reindex(ccfg: CollectorConfig, store: BundleStore) -> int:
    # lazy: the collector extra (starlette) is needed only by the commands that serve
    from collector.app import create_app, reindex_undecryptable

    done = reindex_undecryptable(create_app(ccfg, store=store).state.collector)
    sys.stdout.write(
        f"opened and indexed {done.opened} bundle(s); {done.still} still undecryptable; "
        f"{done.failed} unreadable (see the log)\n"
    )
    return EX_FAIL if done.failed else EX_OK


def _identity_problem(ccfg: CollectorConfig) -> str:
    """'' when age_identity_file is unset or holds identities, else why not (one line)."""
    if not ccfg.age_identity_file:
        return ""
    try:
        load_identities(ccfg.age_identity_file)
    except KeyFileError as e:
        return f"[collector] age_identity_file: {e}"
    return ""


def _account_exit(what: str, e: AccountError) -> int:
    _err(f"posagent collector {what}: {e}")
    if isinstance(e, AccountExists):
        return EX_CANTCREAT
    if isinstance(e, NoSuchAccount):
        return EX_NOINPUT
    return EX_USAGE


def cmd_add_device(args: argparse.Namespace) -> int:
    """Print a new token for DEVICE_ID once; tokens_file keeps only its SHA-256; with
    --tenant, the device's site belongs to that tenant (a database row)."""
    cfg = load_collector_config(args.config)
    return _on_store(cfg, "add-device", lambda st: _add_device(args, cfg, st))


def _add_device(args: argparse.Namespace, cfg: CollectorConfig, store: BundleStore) -> int:
    try:
        token = place_device(
            database(store),
            cfg.tokens_file,
            args.device_id,
            site=args.site,
            tenant=args.tenant or "",
            rotate=args.rotate,
            actor=audit.cli_actor(),
            address="local",
        )
    except AccountError as e:
        return _account_exit("add-device", e)
    except ValueError as e:
        _err(f"posagent collector add-device: {e}")
        return EX_USAGE
    except FileExistsError as e:
        _err(f"posagent collector add-device: {e}")
        return EX_CANTCREAT
    except TokenFileError as e:
        _err(f"posagent collector add-device: {e}")
        return EX_DATAERR
    except OSError as e:
        _err(f"posagent collector add-device: cannot write {cfg.tokens_file}: {e.strerror or e}")
        return EX_CANTCREAT
    sys.stdout.write(token + "\n")
    _err(
        f"device {args.device_id} registered in {cfg.tokens_file}; "
        "the token above is shown once: put it in the terminal's [upload] token_file"
    )
    return EX_OK


def _password_from_stdin() -> str:
    """The first line of stdin, without its line end."""
    return sys.stdin.readline().rstrip("\r\n")


def cmd_user(args: argparse.Namespace) -> int:
    """`collector user add|list|disable|enable|passwd`: people on the read side."""
    cfg = load_collector_config(args.config)
    what = f"user {args.user_cmd}"
    generated = ""
    password = ""
    if args.user_cmd in ("add", "passwd"):
        if args.password_stdin:
            password = _password_from_stdin()
        else:
            password = generated = passwords.generate()
        try:
            passwords.check_strength(password)
        except AccountError as e:
            return _account_exit(what, e)
    return _on_store(cfg, what, lambda st: _user(args, st, password, generated))


def _user(args: argparse.Namespace, store: BundleStore, password: str, generated: str) -> int:
    what = f"user {args.user_cmd}"
    db = database(store)
    actor = audit.cli_actor()
    try:
        if args.user_cmd == "list":
            found = users.list_users(db)
            if args.json:
                sys.stdout.write(json.dumps([u.to_dict() for u in found], indent=2) + "\n")
            for u in [] if args.json else found:
                scope = "*" if u.all_tenants else ",".join(u.tenants) or "-"
                state = "disabled" if u.disabled else "active"
                sys.stdout.write(f"{u.name}\t{u.role.value}\t{scope}\t{state}\n")
            return EX_OK
        if args.user_cmd == "add":
            role = users.parse_role(args.role)
            users.add_user(
                db,
                args.name,
                role,
                password=password,
                tenants_=args.tenant or [],
                all_tenants=args.all_tenants,
                must_change=bool(generated),
                actor=actor,
                address="local",
            )
            done = f"user {args.name} ({role.value}) added"
        elif args.user_cmd in ("disable", "enable"):
            users.set_disabled(
                db, args.name, args.user_cmd == "disable", actor=actor, address="local"
            )
            done = f"user {args.name} {args.user_cmd}d"
        else:
            users.set_password(
                db, args.name, password, must_change=bool(generated), actor=actor, address="local"
            )
            done = f"user {args.name}: password replaced, sessions ended"
    except AccountError as e:
        return _account_exit(what, e)
    if generated:
        sys.stdout.write(generated + "\n")
        _err(f"{done}; the one-time password above is shown once (changed at first login)")
    else:
        _err(done)
    return EX_OK


def cmd_token(args: argparse.Namespace) -> int:
    """`collector token create|list|revoke`: personal API tokens (Bearer) for scripts."""
    cfg = load_collector_config(args.config)
    what = f"token {args.token_cmd}"
    return _on_store(cfg, what, lambda st: _token(args, st))


def _token(args: argparse.Namespace, store: BundleStore) -> int:
    what = f"token {args.token_cmd}"
    db = database(store)
    actor = audit.cli_actor()
    try:
        if args.token_cmd == "create":
            token_id, token = tokens.create(db, args.user, args.name, actor=actor, address="local")
            sys.stdout.write(token + "\n")
            _err(
                f"token {token_id} ({args.name}) of {args.user}: shown once; send it as "
                "'Authorization: Bearer <token>'"
            )
        elif args.token_cmd == "revoke":
            owner = tokens.revoke(db, args.id, actor=actor, address="local")
            _err(f"token {args.id} of {owner} revoked")
        else:
            found = tokens.list_tokens(db, args.user or "")
            if args.json:
                sys.stdout.write(json.dumps([t.to_dict() for t in found], indent=2) + "\n")
            for t in [] if args.json else found:
                state = "revoked" if t.revoked_at else "live"
                sys.stdout.write(f"{t.id}\t{t.user}\t{t.name}\t{rfc3339(t.created_at)}\t{state}\n")
    except AccountError as e:
        return _account_exit(what, e)
    return EX_OK


def cmd_migrate(args: argparse.Namespace) -> int:
    """Bring the index's schema to the version this collector knows (idempotent).

    Exit 0 when applied or already current; 78 when the index is newer than this
    collector (upgrade it); 69 when the index cannot be reached.
    """
    ccfg = load_collector_config(args.config)
    try:
        where, before, after = migrate_store(ccfg)
    except SchemaError as e:
        _err(f"posagent collector migrate: {e}")
        return EX_CONFIG
    except StorageError as e:
        _err(f"posagent collector migrate: {e}")
        return EX_UNAVAILABLE
    if before == after:
        sys.stdout.write(f"{where}: schema {after} is current\n")
    else:
        sys.stdout.write(f"{where}: schema {before} -> {after}\n")
    return EX_OK


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the collector on uvicorn until SIGINT/SIGTERM."""
    cfg = load_config(args.config)
    ccfg = load_collector_config(args.config)
    agent_log.configure(cfg.agent.log_level, cfg.agent.log_format, Redactor(), sys.stderr)
    try:
        # lazy: the collector extra (starlette, uvicorn) is not installed on terminals
        from collector.server import bind, parse_listen, serve, tls_context
    except ImportError as e:
        _err(f"posagent collector serve: install the collector extra (posagent[collector]): {e}")
        return EX_UNAVAILABLE
    log = structlog.get_logger("collector")
    try:
        host, port = parse_listen(args.listen or ccfg.listen)
    except ValueError as e:
        _err(f"posagent collector serve: {e}")
        return EX_CONFIG
    try:
        tls = tls_context(ccfg)
    except ValueError as e:
        _err(f"posagent collector serve: {e}")
        return EX_CONFIG
    except (OSError, ssl.SSLError) as e:
        _err(f"posagent collector serve: TLS certificate or key unusable: {e}")
        return EX_CONFIG
    bad = _identity_problem(ccfg)
    if bad:
        _err(f"posagent collector serve: {bad}")
        return EX_CONFIG
    try:
        sock = bind(host, port)
    except OSError as e:
        _err(f"posagent collector serve: cannot listen on {host}:{port}: {e.strerror or e}")
        return EX_UNAVAILABLE
    if not Path(ccfg.tokens_file).exists():
        log.warning("collector_no_devices", tokens_file=ccfg.tokens_file, hint="add-device")
    log.info(
        "collector_starting",
        listen=f"{host}:{sock.getsockname()[1]}",
        tls=bool(tls),
        data_dir=ccfg.data_dir,
    )
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it with the previous
    # handler in place: make that handler a no-op so a requested stop exits 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        serve(ccfg, sock, tls)
    except TokenFileError as e:
        _err(f"posagent collector serve: {e}")
        return EX_CONFIG
    except SchemaError as e:
        _err(f"posagent collector serve: {e}")
        return EX_CONFIG
    except (StorageError, OSError) as e:
        _err(f"posagent collector serve: storage unusable (data_dir {ccfg.data_dir}): {e}")
        return EX_CANTCREAT
    finally:
        sock.close()
    return EX_OK


# --------------------------------------------------------------------------- the channel (issue 16)


def cmd_keygen(args: argparse.Namespace) -> int:
    """`collector keygen`: the command key at [collector] signing_key_file (never overwritten).

    Exit 0 with the public key printed, 78 when signing_key_file is not set, 73 when a key
    is there already or the file cannot be made."""
    ccfg = load_collector_config(args.config)
    if not ccfg.signing_key_file:
        _err("posagent collector keygen: set [collector] signing_key_file first")
        return EX_CONFIG
    try:
        pem = keygen(ccfg.signing_key_file)
    except FileExistsError:
        _err(
            f"posagent collector keygen: {ccfg.signing_key_file} exists: "
            "the key terminals trust is kept (remove it by hand to replace it)"
        )
        return EX_CANTCREAT
    except KeyFileError as e:
        _err(f"posagent collector keygen: {e}")
        return EX_CANTCREAT
    sys.stdout.write(pem)
    _err(f"command signing key written to {ccfg.signing_key_file} (0600)")
    return EX_OK


def cmd_enroll_token(args: argparse.Namespace) -> int:
    """`collector enroll-token create|list|revoke`: create prints the token once."""
    ccfg = load_collector_config(args.config)
    return _on_store(ccfg, "enroll-token", lambda st: _enroll_token(args, st))


def _enroll_token(args: argparse.Namespace, store: BundleStore) -> int:
    now = time.time()
    db = database(store)
    if args.token_cmd == "create":
        try:
            expires_s = enroll.parse_duration(args.expires)
            token, row = enroll.create_token(
                db,
                site=args.site,
                tenant=args.tenant or "",
                uses=args.uses,
                expires_s=expires_s,
                by=cli_actor(),
                now=now,
            )
        except ValueError as e:
            _err(f"posagent collector enroll-token create: {e}")
            return EX_USAGE
        sys.stdout.write(token + "\n")
        uses = "no limit" if not row.uses_max else f"{row.uses_max} use(s)"
        _err(
            f"enrollment token {row.id} for site {row.site!r}: {uses}, expires "
            f"{rfc3339(row.expires_at)}; shown once: write it to the terminal's "
            "[upload] enrollment_token_file (0600)"
        )
        return EX_OK
    if args.token_cmd == "list":
        rows = enroll.list_tokens(db)
        if args.json:
            sys.stdout.write(json.dumps([r.to_json(now) for r in rows], indent=2) + "\n")
            return EX_OK
        for r in rows:
            used = f"{r.uses}/{r.uses_max or '-'}"
            sys.stdout.write(
                f"{r.id}\t{r.site}\t{r.tenant or '-'}\t{used}\t"
                f"{rfc3339(r.expires_at)}\t{r.state(now)}\n"
            )
        _err(f"{len(rows)} enrollment token(s)")
        return EX_OK
    try:
        row = enroll.revoke_token(db, args.token_id, by=cli_actor(), now=now)
    except LookupError as e:
        _err(f"posagent collector enroll-token revoke: {str(e).strip(chr(39))}")
        return EX_NOINPUT
    sys.stdout.write(f"enrollment token {row.id} revoked (site {row.site})\n")
    return EX_OK


def cmd_remote_config(args: argparse.Namespace) -> int:
    """`collector remote-config set|unset|show`: fleet-wide (or --site) values of the safe
    keys delivered at check-in. Exit 64 for a key or value refused (the reason said)."""
    ccfg = load_collector_config(args.config)
    return _on_store(ccfg, "remote-config", lambda st: _remote_config(args, st))


def _remote_config(args: argparse.Namespace, store: BundleStore) -> int:
    site = args.site or ""
    db = database(store)
    if args.rc_cmd == "set":
        try:
            value = rc.parse_value(args.value)
            rc.set_value(db, site, args.key, value, by=cli_actor(), now=time.time())
        except rc.RemoteConfigError as bad:
            _err(f"posagent collector remote-config set: {bad}")
            return EX_USAGE
        sys.stdout.write(f"{site or '(fleet)'}\t{args.key} = {json.dumps(value)}\n")
        return EX_OK
    if args.rc_cmd == "unset":
        if not rc.unset_value(db, site, args.key, by=cli_actor()):
            _err(
                f"posagent collector remote-config unset: {args.key} is not set for "
                f"{site or 'the fleet'}"
            )
            return EX_FAIL
        sys.stdout.write(f"{site or '(fleet)'}\t{args.key} unset\n")
        return EX_OK
    with db.transaction(write=False) as tx:
        rows = rc.entries(tx, None if args.site is None else site)
        merged = rc.values_for(tx, site)
    if args.json:
        out: dict[str, object] = {
            "entries": [
                {
                    "site": e.site,
                    "key": e.key,
                    "value": e.value,
                    "updated_by": e.updated_by,
                    "updated_at": rfc3339(e.updated_at),
                }
                for e in rows
            ]
        }
        out["values"] = merged
        out["digest"] = rc.digest(merged)
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return EX_OK
    for entry in rows:
        where = entry.site or "(fleet)"
        sys.stdout.write(f"{where}\t{entry.key} = {json.dumps(entry.value)}\n")
    sys.stdout.write(
        f"# {site or '(fleet)'} gets {len(merged)} value(s), digest {rc.digest(merged) or '-'}\n"
    )
    return EX_OK
