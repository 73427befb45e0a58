"""A simulated power_supply tree under a fake sys root.

Each supply lives in <root>/devices/sim/power_supply/<name>/ with the
attribute files Linux has (type, online, status, capacity, health, temp in
tenths of °C, voltage_now in µV, present, ...) plus `uevent`, and
<root>/class/power_supply/<name> is a symlink to it, as on a real kernel.
Every write is atomic, so the agent can poll while a test flips values.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

from simulator.state import write_atomic

# File name → uevent key order follows what kernels print.
_ORDER = (
    "type",
    "status",
    "present",
    "online",
    "technology",
    "voltage_now",
    "capacity",
    "capacity_level",
    "temp",
    "health",
    "model_name",
    "manufacturer",
)


class SimPower:
    """Create and change power supplies in a fake sysfs (`root` is the sys root)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        self._attrs: dict[str, dict[str, str]] = {}
        (self.root / "class" / "power_supply").mkdir(parents=True, exist_ok=True)

    # ----------------------------------------------------------------- layout

    def supply_dir(self, name: str) -> Path:
        """The real directory of a supply (class/power_supply/<name> links to it)."""
        return self.root / "devices" / "sim" / "power_supply" / name

    def _write(self, name: str) -> None:
        attrs = self._attrs[name]
        d = self.supply_dir(name)
        d.mkdir(parents=True, exist_ok=True)
        for key, value in attrs.items():
            write_atomic(d / key, value + "\n")
        keys = sorted(attrs, key=lambda k: (_ORDER.index(k) if k in _ORDER else len(_ORDER), k))
        lines = [f"POWER_SUPPLY_NAME={name}"]
        lines += [f"POWER_SUPPLY_{k.upper()}={attrs[k]}" for k in keys]
        write_atomic(d / "uevent", "\n".join(lines) + "\n")
        link = self.root / "class" / "power_supply" / name
        if not link.is_symlink():
            link.symlink_to(Path("../../devices/sim/power_supply") / name)

    def add(self, name: str, **attrs: str | int) -> None:
        """Add a supply with raw sysfs attributes (file name = key, value as sysfs prints it)."""
        with self._lock:
            self._attrs[name] = {k: str(v) for k, v in attrs.items()}
            self._write(name)

    def add_mains(self, name: str = "AC", online: bool = True) -> None:
        """An AC adapter (type Mains)."""
        self.add(name, type="Mains", online=int(online))

    def add_usb(self, name: str = "usb", online: bool = False) -> None:
        """A USB power input (type USB)."""
        self.add(name, type="USB", online=int(online), present=1)

    def add_battery(
        self,
        name: str = "BAT0",
        *,
        capacity_pct: int = 80,
        status: str = "Discharging",
        health: str = "Good",
        temp_c: float = 30.0,
        voltage_uv: int = 12_000_000,
        present: bool = True,
        type: str = "Battery",
    ) -> None:
        """A battery (or a UPS with type="UPS")."""
        self.add(
            name,
            type=type,
            status=status,
            present=int(present),
            technology="Li-ion",
            voltage_now=voltage_uv,
            capacity=capacity_pct,
            temp=round(temp_c * 10),
            health=health,
        )

    def remove(self, name: str) -> None:
        """The supply disappears (driver unbound, battery pulled on some boards)."""
        with self._lock:
            self._attrs.pop(name, None)
            link = self.root / "class" / "power_supply" / name
            if link.is_symlink():
                link.unlink()
            shutil.rmtree(self.supply_dir(name), ignore_errors=True)

    # ----------------------------------------------------------------- changes

    def set(self, name: str, **attrs: str | int) -> None:
        """Change raw attributes of an existing supply."""
        with self._lock:
            self._attrs[name].update({k: str(v) for k, v in attrs.items()})
            self._write(name)

    def set_online(self, name: str, online: bool) -> None:
        """Plug or unplug one external supply."""
        self.set(name, online=int(online))

    def set_ac(self, online: bool) -> None:
        """Plug or unplug every Mains and USB supply at once (mains power lost/back)."""
        for name, attrs in list(self._attrs.items()):
            if attrs.get("type") in ("Mains", "USB"):
                self.set_online(name, online)

    def set_capacity(self, name: str, pct: int) -> None:
        """Battery charge in percent."""
        self.set(name, capacity=pct)

    def set_status(self, name: str, status: str) -> None:
        """Charging, Discharging, Not charging, Full or Unknown."""
        self.set(name, status=status)

    def set_health(self, name: str, health: str) -> None:
        """Good, Overheat, Dead, Over voltage, Cold, ..."""
        self.set(name, health=health)

    def set_temp(self, name: str, temp_c: float) -> None:
        """Temperature in °C (written as tenths, as sysfs does)."""
        self.set(name, temp=round(temp_c * 10))

    def set_present(self, name: str, present: bool) -> None:
        """Battery inserted or removed (the directory stays, as on laptops)."""
        self.set(name, present=int(present))
