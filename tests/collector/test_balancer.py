"""Several collector instances behind Debian's HAProxy with docs/haproxy.cfg (issue 14 items
2 and 5): two `posagent collector serve` on real PostgreSQL + SeaweedFS, two agents
uploading through the balancer over TLS with their real uploader, one instance killed
with SIGKILL mid-run: every bundle ends in sent/ and is stored exactly once (one index
row, one S3 object, the bytes the agent sent)."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import requests

from agent.core.config import load_config
from agent.spool.maildir import Limits, Spool
from agent.upload.uploader import Uploader
from collector.auth import add_device
from collector.config import CollectorConfig
from tests.bundle.kit import small_bundle
from tests.collector.kit import admin_token, bearer
from tests.collector.servers import Seaweed
from tests.collector.test_fleet import _free_port, _healthy, _serve
from tests.collector.test_tls import make_cert
from tests.conftest import is_root, wait_until, write_config

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "haproxy.cfg"
AGENTS = ("T-LB-1", "T-LB-2")
PER_AGENT = 20


def _haproxy() -> str:
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
    if found:
        return found
    if not is_root() or not shutil.which("apt-get"):
        pytest.skip("haproxy not installed (apt-get install haproxy, as root)")
    r = subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "haproxy"],
        capture_output=True,
        text=True,
        env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
        timeout=600,
    )
    found = shutil.which("haproxy", path="/usr/sbin:/usr/bin")
    if not found:
        pytest.skip(f"apt-get install haproxy failed: {r.stderr[-300:]}")
    return found


def loopback_config(pem: Path, port: int, backends: list[int]) -> str:
    """docs/haproxy.cfg with loopback addresses, this certificate, no syslog, no chroot
    and fewer connections."""
    text = REFERENCE.read_text()
    text = re.sub(r"(?m)^\s*(log /dev/log.*|chroot .*|user .*|group .*)\n", "", text)
    text = re.sub(
        r"(?m)^(\s*)bind :443 ssl crt \S+", rf"\1bind 127.0.0.1:{port} ssl crt {pem}", text
    )
    text = re.sub(r"(?m)^\s*server c\d .*\n", "", text)
    text = text.replace("maxconn 20000", "maxconn 2000")  # within a test's file limit
    servers = "".join(f"    server c{i} 127.0.0.1:{p} check\n" for i, p in enumerate(backends))
    assert "backend collectors" in text and f"127.0.0.1:{port}" in text
    return text.rstrip("\n") + "\n" + servers


@pytest.fixture
def haproxy_bin() -> str:
    return _haproxy()


def test_agents_upload_through_haproxy_and_survive_a_killed_instance(
    tmp_path: Path, fleet: dict[str, str], seaweed: Seaweed, haproxy_bin: str
) -> None:
    tokens = tmp_path / "tokens"
    device_tokens = {d: add_device(tokens, d, site="Store LB") for d in AGENTS}
    admin = bearer(admin_token(CollectorConfig(data_dir=str(tmp_path / "admin"), **fleet)))
    procs = [_serve(tmp_path, f"c{i}", fleet, tokens) for i in range(2)]
    lb: subprocess.Popen[bytes] | None = None
    uploaders: list[Uploader] = []
    try:
        for proc, url, _ in procs:
            assert wait_until(lambda u=url, p=proc: _healthy(u) or p.poll() is not None, 30)
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        cert, key = make_cert(tmp_path, 7)
        pem = tmp_path / "lb.pem"
        pem.write_bytes(cert.read_bytes() + key.read_bytes())
        lb_port = _free_port()
        backends = [int(url.rsplit(":", 1)[1]) for _, url, _ in procs]
        cfg_path = tmp_path / "haproxy.cfg"
        cfg_path.write_text(loopback_config(pem, lb_port, backends))
        check = subprocess.run(
            [haproxy_bin, "-c", "-f", str(cfg_path)], capture_output=True, text=True, timeout=30
        )
        assert check.returncode == 0, check.stdout + check.stderr
        lb_log = (tmp_path / "haproxy.log").open("wb")
        lb = subprocess.Popen(
            [haproxy_bin, "-db", "-f", str(cfg_path)], stdout=lb_log, stderr=subprocess.STDOUT
        )
        lb_url = f"https://127.0.0.1:{lb_port}"

        def lb_healthy() -> bool:
            try:
                return requests.get(f"{lb_url}/healthz", verify=str(cert), timeout=2).ok
            except requests.RequestException:
                return False

        assert wait_until(lambda: lb_healthy() or lb.poll() is not None, 20)
        assert lb.poll() is None, (tmp_path / "haproxy.log").read_text()[-2000:]

        sent: dict[str, bytes] = {}
        spools = []
        for dev in AGENTS:
            adir = tmp_path / dev
            cfg = load_config(write_config(adir))
            (adir / "token").write_text(device_tokens[dev] + "\n")
            cfg = dataclasses.replace(
                cfg,
                agent=dataclasses.replace(cfg.agent, device_id=dev),
                upload=dataclasses.replace(
                    cfg.upload,
                    endpoint=lb_url,
                    ca_file=str(cert),
                    backoff_base_s=0.05,
                    backoff_cap_s=0.5,
                    read_timeout_s=10.0,
                ),
            )
            spool = Spool(cfg.agent.state_dir, Limits(reserve_bytes=0)).open()
            for i in range(PER_AGENT):
                b = small_bundle(f"{dev} #{i}", size_bytes=60_000, device=dev)
                spool.enqueue(b.bundle_id, b.data, 1)
                sent[b.bundle_id] = b.data
            spools.append(spool)
            uploaders.append(Uploader(cfg, spool))
        for up in uploaders:
            up.start()

        def stored() -> int:
            return sum(1 for s in spools for _ in s.items("sent"))

        total = len(AGENTS) * PER_AGENT
        assert wait_until(lambda: stored() >= 3, 60, 0.005), "no upload went through"
        victim = procs[0][0]
        victim.send_signal(signal.SIGKILL)  # mid-run: uploads in flight on it are cut
        at_kill = stored()
        assert at_kill < total
        victim.wait(timeout=10)
        assert wait_until(lambda: stored() == total, 90, 0.1), (
            stored(),
            [up.status() for up in uploaders],
        )
        for s in spools:
            assert not list(s.items("new")) and not list(s.items("cur"))
            assert not list(s.items("failed"))
        # stored exactly once: one index row and one S3 object per bundle, the agent's bytes
        listing = requests.get(
            f"{lb_url}/v1/bundles",
            params={"limit": 500},
            headers=admin,
            verify=str(cert),
            timeout=10,
        ).json()
        assert listing["total"] == total
        assert sorted(b["bundle_id"] for b in listing["bundles"]) == sorted(sent)
        assert {b["site"] for b in listing["bundles"]} == {"Store LB"}
        prefix = fleet["blob_url"].removeprefix(f"s3://{seaweed.bucket}/")
        keys = seaweed.keys(prefix + "/")
        assert len(keys) == total
        assert sorted(k.split("/")[-2] for k in keys) == sorted(sent)
        for bid in list(sent)[:: PER_AGENT // 3]:
            r = requests.get(
                f"{lb_url}/v1/bundles/{bid}/download", headers=admin, verify=str(cert), timeout=10
            )
            assert r.content == sent[bid]
    finally:
        for up in uploaders:
            up.stop()
        if lb is not None:
            lb.terminate()
            lb.wait(timeout=10)
        for proc, _, _ in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
