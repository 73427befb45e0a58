"""`posagent collector serve|add-device|migrate`, run by agent/commands/collector.py."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import structlog

from agent.core import log as agent_log
from agent.core.config import load_config
from agent.core.exits import (
    EX_CANTCREAT,
    EX_CONFIG,
    EX_DATAERR,
    EX_OK,
    EX_UNAVAILABLE,
    EX_USAGE,
)
from agent.core.redact import Redactor
from collector.auth import TokenFileError, add_device
from collector.config import load_collector_config
from collector.storage import SchemaError, StorageError, migrate_store


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")


def run(args: argparse.Namespace) -> int:
    """Dispatch `posagent collector ACTION`."""
    if args.collector_cmd == "serve":
        return cmd_serve(args)
    if args.collector_cmd == "add-device":
        return cmd_add_device(args)
    if args.collector_cmd == "migrate":
        return cmd_migrate(args)
    return EX_USAGE


def cmd_add_device(args: argparse.Namespace) -> int:
    """Print a new token for DEVICE_ID once; tokens_file keeps only its SHA-256."""
    cfg = load_collector_config(args.config)
    try:
        token = add_device(cfg.tokens_file, args.device_id, rotate=args.rotate)
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
        from collector.server import bind, parse_listen, serve
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
        sock = bind(host, port)
    except OSError as e:
        _err(f"posagent collector serve: cannot listen on {host}:{port}: {e.strerror or e}")
        return EX_UNAVAILABLE
    if not Path(ccfg.tokens_file).exists():
        log.warning("collector_no_devices", tokens_file=ccfg.tokens_file, hint="add-device")
    log.info(
        "collector_starting",
        listen=f"{host}:{sock.getsockname()[1]}",
        data_dir=ccfg.data_dir,
        operator_token=bool(ccfg.operator_token_file),
    )
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it with the previous
    # handler in place: make that handler a no-op so a requested stop exits 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        serve(ccfg, sock)
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
