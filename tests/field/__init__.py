"""Field tests: the agent on a real Debian userland (systemd-nspawn, qemu), built by debian.py."""
