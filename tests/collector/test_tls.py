"""`posagent collector serve` terminating TLS itself (issue 14 item 5): HTTPS uploads, the
certificate re-read on SIGHUP with the listener and open connections kept, a bad
certificate on reload keeping the previous one, half a TLS config refused (78)."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
import requests

from agent.core.exits import EX_CONFIG
from collector.auth import add_device
from collector.config import CollectorConfig
from tests.bundle.kit import make_bundle
from tests.collector.kit import admin_token, bearer, upload_headers
from tests.conftest import posagent_argv, wait_until, write_config

DEV = "T-0001"

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl CLI")


def make_cert(dir_: Path, serial: int) -> tuple[Path, Path]:
    """A self-signed P-256 certificate for 127.0.0.1 with this serial (openssl CLI)."""
    cert, key = dir_ / f"c{serial}.pem", dir_ / f"k{serial}.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
        + ["-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2"]
        + ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
        + ["-set_serial", str(serial)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def served_serial(port: int, cafile: Path) -> int | None:
    """The serial of the certificate a new TLS connection is shown; None when refused."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s,
        ):
            cert = s.getpeercert()
    except (OSError, ssl.SSLError):
        return None
    return int(str(cert["serialNumber"]), 16) if cert else None


def test_serve_https_and_reload_the_certificate_on_sighup(tmp_path: Path) -> None:
    live_cert, live_key = tmp_path / "tls.crt", tmp_path / "tls.key"
    c1, k1 = make_cert(tmp_path, 1001)
    c2, k2 = make_cert(tmp_path, 2002)
    shutil.copy(c1, live_cert)
    shutil.copy(k1, live_key)
    both = tmp_path / "ca.pem"
    both.write_bytes(c1.read_bytes() + c2.read_bytes())
    tokens = tmp_path / "tokens"
    token = add_device(tokens, DEV)
    admin = bearer(admin_token(CollectorConfig(data_dir=str(tmp_path / "d"))))
    port = _port()
    conf = write_config(
        tmp_path,
        "[collector]\n"
        f'listen = "127.0.0.1:{port}"\ntokens_file = "{tokens}"\ndata_dir = "{tmp_path / "d"}"\n'
        f'tls_cert_file = "{live_cert}"\ntls_key_file = "{live_key}"\n',
    )
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            posagent_argv("collector", "serve", "--config", str(conf)),
            stdout=subprocess.DEVNULL,
            stderr=out,
        )
    try:
        assert wait_until(lambda: served_serial(port, both) or proc.poll() is not None, 30)
        assert proc.poll() is None, log.read_text()[-2000:]
        assert served_serial(port, both) == 1001
        url = f"https://127.0.0.1:{port}"
        b = make_bundle(device=DEV)
        h = upload_headers(b.bundle_id, b.data, token, DEV)
        r = requests.put(f"{url}/v1/bundles/{b.bundle_id}", data=b.data, headers=h, verify=str(c1))
        assert r.status_code == 201, r.text
        # plain HTTP on the TLS port gets nothing stored
        with pytest.raises(requests.RequestException):
            requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).raise_for_status()
        # a connection opened before the reload stays usable after it
        before = http.client.HTTPSConnection(
            "127.0.0.1", port, context=ssl.create_default_context(cafile=str(both)), timeout=5
        )
        before.request("GET", "/healthz")
        assert before.getresponse().read()
        # a broken certificate file on SIGHUP: the previous chain stays
        live_cert.write_text("not a certificate")
        proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "tls_reload_failed" in log.read_text(), 10)
        assert served_serial(port, both) == 1001
        # the new files, then SIGHUP: new connections see serial 2002, same process and port
        shutil.copy(k2, live_key.with_suffix(".new"))
        os.replace(live_key.with_suffix(".new"), live_key)
        shutil.copy(c2, live_cert.with_suffix(".new"))
        os.replace(live_cert.with_suffix(".new"), live_cert)
        proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: served_serial(port, both) == 2002, 10)
        assert proc.poll() is None
        before.request("GET", "/healthz")
        assert before.getresponse().status == 200
        before.close()
        r = requests.get(f"{url}/v1/bundles", headers=admin, verify=str(c2), timeout=10)
        assert r.json()["total"] == 1
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("serve did not stop on SIGTERM: " + log.read_text()[-3000:])
    assert proc.returncode == 0


def test_half_a_tls_config_is_refused(tmp_path: Path) -> None:
    conf = write_config(
        tmp_path,
        f'[collector]\nlisten = "127.0.0.1:{_port()}"\ntls_cert_file = "{tmp_path / "c"}"\n'
        f'data_dir = "{tmp_path / "d"}"\n',
    )
    r = subprocess.run(
        posagent_argv("collector", "serve", "--config", str(conf)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == EX_CONFIG, r.stderr
    assert "tls_cert_file and tls_key_file go together" in r.stderr
