#!/bin/sh
# Install posagent on a terminal (or a box next to an Android terminal).
#
#   sudo sh systemd/install.sh [SOURCE]    SOURCE: this checkout (default) or a wheel file
#
# Puts the agent in its own virtual environment under /opt/posagent/venv, the
# sample config in /etc/posagent/agent.toml (kept if present), a device key, the signing key
# (in the state dir, /var/lib/posagent/keys),
# the systemd unit, sysusers.d and tmpfiles.d snippets, then prints the next
# steps. POSAGENT_ROOT=/some/dir installs into that tree instead of / (for
# packaging and tests; systemctl is then not called).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
src=${1:-$(dirname "$here")}
root=${POSAGENT_ROOT:-/}
root=${root%/}
python=${PYTHON:-python3}

opt="$root/opt/posagent"
etc="$root/etc/posagent"
unitdir="$root/etc/systemd/system"
sysusers="$root/usr/lib/sysusers.d"
tmpfiles="$root/usr/lib/tmpfiles.d"

say() { printf 'posagent install: %s\n' "$*"; }

if [ -z "${POSAGENT_ROOT:-}" ] && [ "$(id -u)" != 0 ]; then
  say "run as root (or set POSAGENT_ROOT to install into a directory tree)" >&2
  exit 77
fi
"$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || {
  say "Python 3.11 or newer is required ($python)" >&2; exit 69; }

say "virtual environment in $opt/venv"
mkdir -p "$opt"
"$python" -m venv "$opt/venv"
"$opt/venv/bin/python" -m pip install --quiet --upgrade pip
"$opt/venv/bin/python" -m pip install --quiet "$src"
if [ -f "$src/README.md" ]; then cp "$src/README.md" "$opt/README.md"; fi

mkdir -p "$etc" "$unitdir" "$sysusers" "$tmpfiles"
sample=$("$opt/venv/bin/python" -c 'from agent.core.config import SAMPLE_CONFIG; print(SAMPLE_CONFIG)')
if [ -f "$etc/agent.toml" ]; then
  say "keeping existing $etc/agent.toml (sample at $sample)"
else
  install -m 0640 "$sample" "$etc/agent.toml"
  say "sample config installed: $etc/agent.toml"
fi
if [ ! -s "$etc/device.key" ]; then
  (umask 077; "$opt/venv/bin/python" -c 'import secrets; print(secrets.token_hex(32))' > "$etc/device.key")
  say "new device key: $etc/device.key (give the collector a copy to verify bundles)"
fi
install -m 0644 "$here/posagent.service" "$unitdir/posagent.service"
install -m 0644 "$here/posagent.sysusers.conf" "$sysusers/posagent.conf"
install -m 0644 "$here/posagent.tmpfiles.conf" "$tmpfiles/posagent.conf"

if [ -z "${POSAGENT_ROOT:-}" ]; then
  command -v systemd-sysusers >/dev/null && systemd-sysusers "$sysusers/posagent.conf" || true
  command -v systemd-tmpfiles >/dev/null && systemd-tmpfiles --create "$tmpfiles/posagent.conf" || true
  # The Ed25519 signing key is made here, on the terminal, and never leaves it. Its home is
  # the state dir (/var/lib/posagent/keys/device.ed25519, 0600 posagent, in a 0700 dir):
  # the only place the daemon may write under its unit (ProtectSystem=strict), so it can
  # rotate the key on command (rotate-signing-key). A key an older install made at
  # $etc/device.ed25519 is kept and stays the terminal's identity until its first rotation.
  made=$("$opt/venv/bin/posagent" keygen --config "$etc/agent.toml" | head -n 1) || true
  say "signing key: ${made:-see posagent keygen} (public key: posagent key show-public)"
  chgrp posagent "$etc" "$etc/agent.toml" "$etc/device.key" 2>/dev/null || true
  chmod 0640 "$etc/device.key"
  if [ -f "$etc/device.ed25519" ]; then
    chgrp posagent "$etc/device.ed25519" 2>/dev/null || true
    chmod 0640 "$etc/device.ed25519"
  fi
  command -v systemctl >/dev/null && systemctl daemon-reload 2>/dev/null || true
fi

cat <<NEXT

posagent is installed. Next steps:
  1. See what is here: $opt/venv/bin/posagent discover --write $etc/discovered.toml
     (add --probe PORT for a receipt printer's port; merge the fragment into $etc/agent.toml)
  2. Edit $etc/agent.toml: device_id, site, [upload] endpoint, payment hosts.
  3. Put the device token in /etc/posagent/token (from: posagent collector add-device ID).
  4. Check it:      $opt/venv/bin/posagent check-config --config $etc/agent.toml
  5. See devices:   $opt/venv/bin/posagent selftest --config $etc/agent.toml
  6. Start it:      systemctl enable --now posagent
  7. Watch it:      systemctl status posagent; journalctl -u posagent -f; posagent status
  What the unit's sandbox hides (a trigger dir, a PIN flag in /tmp, logs under /home, the
  POS session's screen) and how to open it: README, "Install on a terminal".
NEXT
