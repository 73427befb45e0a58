"""Power supplies: Linux power_supply sysfs, psutil fallback, Android `dumpsys battery`.

Pure parsers (`parse_uevent`, `supply_from_attributes`, `parse_dumpsys_battery`)
sit beside thin readers that take `Roots` (`read_power_supplies`,
`read_power_status`). Units follow sysfs where it is exact and are converted
where a name says so: `temp_c` (sysfs gives tenths of a degree), `voltage_uv`
(µV, as sysfs), `voltage_mv` (mV, as dumpsys).
"""

from __future__ import annotations

import errno
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from drivers.roots import Roots

# Attribute files read one by one; each may be missing (not supported) or fail.
SYSFS_ATTRIBUTES = (
    "type",
    "status",
    "capacity",
    "capacity_level",
    "online",
    "present",
    "health",
    "temp",
    "voltage_now",
    "technology",
    "model_name",
    "manufacturer",
)

# Types that feed the terminal from outside (everything but Battery and UPS).
BATTERY_TYPES = frozenset({"Battery"})
STORAGE_TYPES = frozenset({"Battery", "UPS"})

# android.os.BatteryManager BATTERY_STATUS_* / BATTERY_HEALTH_*, named as Linux sysfs does.
ANDROID_STATUS = {
    1: "Unknown",
    2: "Charging",
    3: "Discharging",
    4: "Not charging",
    5: "Full",
}
ANDROID_HEALTH = {
    1: "Unknown",
    2: "Good",
    3: "Overheat",
    4: "Dead",
    5: "Over voltage",
    6: "Unspecified failure",
    7: "Cold",
}


@dataclass(frozen=True)
class PowerSupply:
    """One supply (Mains, USB, Battery, UPS, ...) as the kernel or Android reports it."""

    name: str
    type: str | None = None
    status: str | None = None
    capacity_pct: int | None = None
    capacity_level: str | None = None
    online: bool | None = None
    present: bool | None = None
    health: str | None = None
    temp_c: float | None = None
    voltage_uv: int | None = None
    technology: str | None = None
    model_name: str | None = None
    manufacturer: str | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)
    errors: tuple[str, ...] = ()

    @property
    def is_external(self) -> bool:
        """True for a supply that powers the terminal from outside (Mains, USB, Wireless...).

        A supply without a type (old kernels print no POWER_SUPPLY_TYPE and
        some have no `type` file) counts as external when it reports `online`
        and no capacity, which is how AC adapters look there.
        """
        if self.type is not None:
            return self.type not in STORAGE_TYPES
        return self.online is not None and self.capacity_pct is None

    @property
    def is_battery(self) -> bool:
        """True for a battery, or a typeless supply that reports a capacity."""
        if self.type is not None:
            return self.type in BATTERY_TYPES
        return self.capacity_pct is not None and self.online is None


@dataclass(frozen=True)
class PowerStatus:
    """Every supply seen in one reading, with the derived facts monitors need."""

    source: str  # "sysfs" | "psutil" | "dumpsys" | "none"
    supplies: tuple[PowerSupply, ...] = ()
    errors: tuple[str, ...] = ()
    updates_stopped: bool = False  # Android battery service frozen by `dumpsys battery unplug`

    @property
    def external(self) -> tuple[PowerSupply, ...]:
        """The supplies that feed the terminal from outside."""
        return tuple(s for s in self.supplies if s.is_external)

    @property
    def ac_online(self) -> bool | None:
        """True if any external supply is online, False if all are offline, None if unknown."""
        known = [s.online for s in self.external if s.online is not None]
        if not known:
            return None
        return any(known)

    @property
    def battery(self) -> PowerSupply | None:
        """The first present battery (absent ones are skipped), or None."""
        for s in self.supplies:
            if s.is_battery and s.present is not False:
                return s
        return None

    @property
    def ups(self) -> PowerSupply | None:
        """The first UPS supply, or None."""
        for s in self.supplies:
            if s.type == "UPS":
                return s
        return None

    @property
    def battery_capacity_pct(self) -> int | None:
        """Charge of the battery in percent, None without a battery."""
        b = self.battery
        return b.capacity_pct if b else None

    @property
    def battery_status(self) -> str | None:
        """Charging, Discharging, Not charging, Full or Unknown; None without a battery."""
        b = self.battery
        return b.status if b else None

    @property
    def battery_health(self) -> str | None:
        """Good, Overheat, Dead, ... as sysfs names them; None when not reported."""
        b = self.battery
        return b.health if b else None

    @property
    def battery_temp_c(self) -> float | None:
        """Battery temperature in °C; None when not reported."""
        b = self.battery
        return b.temp_c if b else None


# --------------------------------------------------------------------------- parsers


def parse_uevent(text: str) -> dict[str, str]:
    """POWER_SUPPLY_* lines of a uevent file as {attribute: value} (lower-case, no prefix).

    Values are kept as written (e.g. SERIAL_NUMBER's leading spaces); other
    KEY=VALUE lines (DEVTYPE, ...) are ignored.
    """
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep or not key.startswith("POWER_SUPPLY_"):
            continue
        attr = key[len("POWER_SUPPLY_") :].lower()
        if attr and attr not in out:
            out[attr] = value
    return out


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        n = int(value.strip())
    except ValueError:
        return None
    # sysfs and dumpsys print at most 64-bit values; anything larger is garbage
    # (and would overflow the float conversions below).
    return n if -(2**63) <= n < 2**64 else None


def _bool01(value: str | None) -> bool | None:
    n = _int(value)
    if n is None:
        return None
    return n != 0


def _str(value: str | None) -> str | None:
    if value is None:
        return None
    v = value.strip()
    return v or None


def supply_from_attributes(
    name: str, attrs: Mapping[str, str], errors: tuple[str, ...] = ()
) -> PowerSupply:
    """Build a PowerSupply from sysfs-style attributes (file names or uevent keys)."""
    temp = _int(attrs.get("temp"))
    return PowerSupply(
        name=_str(attrs.get("name")) or name,
        type=_str(attrs.get("type")),
        status=_str(attrs.get("status")),
        capacity_pct=_int(attrs.get("capacity")),
        capacity_level=_str(attrs.get("capacity_level")),
        online=_bool01(attrs.get("online")),
        present=_bool01(attrs.get("present")),
        health=_str(attrs.get("health")),
        temp_c=temp / 10.0 if temp is not None else None,
        voltage_uv=_int(attrs.get("voltage_now")),
        technology=_str(attrs.get("technology")),
        model_name=_str(attrs.get("model_name")),
        manufacturer=_str(attrs.get("manufacturer")),
        attributes=dict(attrs),
        errors=errors,
    )


def parse_power_supply_uevent(text: str, name: str = "") -> PowerSupply:
    """A PowerSupply from the text of one `uevent` file."""
    return supply_from_attributes(name, parse_uevent(text))


# --------------------------------------------------------------------------- readers


def _err(what: str, e: OSError) -> str:
    code = errno.errorcode.get(e.errno, str(e.errno)) if e.errno is not None else type(e).__name__
    return f"{what}: {code}"


def read_power_supply(path: Path) -> PowerSupply:
    """Read one supply directory: uevent first, then each attribute file (files win).

    A missing attribute file means "not supported" and is silent; any other
    read failure (EIO, ENODATA, EINVAL, a directory in its place) is kept in
    `errors` and the attribute stays unknown.
    """
    name = path.name
    attrs: dict[str, str] = {}
    errors: list[str] = []
    try:
        attrs.update(parse_uevent(path.joinpath("uevent").read_text("utf-8", "replace")))
    except FileNotFoundError:
        pass
    except OSError as e:
        errors.append(_err("uevent", e))
    for attr in SYSFS_ATTRIBUTES:
        try:
            attrs[attr] = path.joinpath(attr).read_text("utf-8", "replace").strip("\n")
        except FileNotFoundError:
            continue
        except OSError as e:
            attrs.pop(attr, None)
            errors.append(_err(attr, e))
    return supply_from_attributes(name, attrs, tuple(errors))


def read_power_supplies(roots: Roots) -> tuple[list[PowerSupply], list[str]]:
    """Every supply under <sys>/class/power_supply, sorted by name, and listing errors."""
    base = roots.sys_path("class", "power_supply")
    try:
        entries = sorted(base.iterdir(), key=lambda p: p.name)
    except FileNotFoundError:
        return [], []
    except OSError as e:
        return [], [_err(str(base), e)]
    supplies = [read_power_supply(p) for p in entries if p.is_dir()]
    return supplies, []


def _psutil_status() -> PowerStatus:

    if not hasattr(psutil, "sensors_battery"):
        return PowerStatus(source="none")
    try:
        b = psutil.sensors_battery()
    except (OSError, RuntimeError) as e:
        return PowerStatus(source="none", errors=(f"psutil: {e}",))
    if b is None:
        return PowerStatus(source="none")
    supplies: list[PowerSupply] = []
    if b.power_plugged is not None:
        supplies.append(PowerSupply(name="psutil-ac", type="Mains", online=bool(b.power_plugged)))
    if b.power_plugged is None:
        status = "Unknown"
    elif b.power_plugged:
        status = "Full" if b.percent >= 100 else "Charging"
    else:
        status = "Discharging"
    supplies.append(
        PowerSupply(
            name="psutil-battery",
            type="Battery",
            status=status,
            capacity_pct=round(b.percent),
            present=True,
        )
    )
    return PowerStatus(source="psutil", supplies=tuple(supplies))


def read_power_status(roots: Roots, *, psutil_fallback: bool = True) -> PowerStatus:
    """All supplies from sysfs; psutil.sensors_battery() when sysfs has none."""
    supplies, errors = read_power_supplies(roots)
    if supplies:
        return PowerStatus(source="sysfs", supplies=tuple(supplies), errors=tuple(errors))
    if psutil_fallback:
        st = _psutil_status()
        return PowerStatus(source=st.source, supplies=st.supplies, errors=(*errors, *st.errors))
    return PowerStatus(source="none", errors=tuple(errors))


# --------------------------------------------------------------------------- Android


@dataclass(frozen=True)
class AndroidBattery:
    """`dumpsys battery` as typed values (None where a line is absent or unreadable)."""

    recognized: bool
    updates_stopped: bool = False
    ac_powered: bool | None = None
    usb_powered: bool | None = None
    wireless_powered: bool | None = None
    dock_powered: bool | None = None
    max_charging_current_ua: int | None = None
    max_charging_voltage_uv: int | None = None
    charge_counter_uah: int | None = None
    status_code: int | None = None
    status: str | None = None
    health_code: int | None = None
    health: str | None = None
    present: bool | None = None
    level: int | None = None
    scale: int | None = None
    voltage_mv: int | None = None
    temp_c: float | None = None
    technology: str | None = None
    fields: Mapping[str, str] = field(default_factory=dict)

    @property
    def percent(self) -> float | None:
        """level / scale in percent (None when either is missing or scale ≤ 0)."""
        if self.level is None or self.scale is None or self.scale <= 0:
            return None
        return 100.0 * self.level / self.scale

    @property
    def plugged(self) -> bool | None:
        """True if any of AC/USB/Wireless/Dock powered is true; None if none is reported."""
        flags = [
            f
            for f in (self.ac_powered, self.usb_powered, self.wireless_powered, self.dock_powered)
            if f is not None
        ]
        return any(flags) if flags else None


_LINE = re.compile(r"^[ \t]*([^:\n]+?):[ \t]*(.*?)[ \t]*$")


def _android_bool(value: str | None) -> bool | None:
    if value is None:
        return None
    v = value.strip().lower()
    if v == "true":
        return True
    if v == "false":
        return False
    return None


def parse_dumpsys_battery(text: str) -> AndroidBattery:
    """Parse `dumpsys battery`.

    Keys are matched exactly (case-sensitive) and the first occurrence wins,
    so `Capacity level: 3` never stands in for `level:`, Samsung's lower-case
    `charge counter:` never overrides `Charge counter:`, and vendor lines with
    odd indentation or later sections (BatteryInfoBackUp, MiuiBatteryService)
    are kept in `fields` only.
    """
    lines = text.splitlines()
    recognized = False
    stopped = False
    fields: dict[str, str] = {}
    for raw in lines:
        line = raw.rstrip("\r")
        stripped = line.strip()
        if stripped == "Current Battery Service state:":
            recognized = True
            continue
        if stripped.startswith("(UPDATES STOPPED"):
            stopped = True
            continue
        m = _LINE.match(line)
        if m is None:
            continue
        key, value = m.group(1).strip(), m.group(2)
        if key and key not in fields:
            fields[key] = value

    status_code = _int(fields.get("status"))
    health_code = _int(fields.get("health"))
    temp = _int(fields.get("temperature"))
    present = _android_bool(fields.get("present"))
    level = _int(fields.get("level"))
    if not recognized:
        recognized = level is not None and ("AC powered" in fields or "status" in fields)
    return AndroidBattery(
        recognized=recognized,
        updates_stopped=stopped,
        ac_powered=_android_bool(fields.get("AC powered")),
        usb_powered=_android_bool(fields.get("USB powered")),
        wireless_powered=_android_bool(fields.get("Wireless powered")),
        dock_powered=_android_bool(fields.get("Dock powered")),
        max_charging_current_ua=_int(fields.get("Max charging current")),
        max_charging_voltage_uv=_int(fields.get("Max charging voltage")),
        charge_counter_uah=_int(fields.get("Charge counter")),
        status_code=status_code,
        status=ANDROID_STATUS.get(status_code, "Unknown") if status_code is not None else None,
        health_code=health_code,
        health=ANDROID_HEALTH.get(health_code, "Unknown") if health_code is not None else None,
        present=present,
        level=level,
        scale=_int(fields.get("scale")),
        voltage_mv=_int(fields.get("voltage")),
        temp_c=temp / 10.0 if temp is not None else None,
        technology=_str(fields.get("technology")),
        fields=fields,
    )


def android_power_status(b: AndroidBattery) -> PowerStatus:
    """The same PowerStatus shape as sysfs, built from a parsed `dumpsys battery`."""
    supplies: list[PowerSupply] = []
    for name, typ, online in (
        ("ac", "Mains", b.ac_powered),
        ("usb", "USB", b.usb_powered),
        ("wireless", "Wireless", b.wireless_powered),
        ("dock", "Dock", b.dock_powered),
    ):
        if online is not None:
            supplies.append(PowerSupply(name=name, type=typ, online=online))
    pct = b.percent
    supplies.append(
        PowerSupply(
            name="battery",
            type="Battery",
            status=b.status,
            capacity_pct=round(pct) if pct is not None else None,
            present=b.present,
            health=b.health,
            temp_c=b.temp_c,
            voltage_uv=b.voltage_mv * 1000 if b.voltage_mv is not None else None,
            technology=b.technology,
            attributes=dict(b.fields),
        )
    )
    errors = () if b.recognized else ("dumpsys battery: output not recognized",)
    return PowerStatus(
        source="dumpsys",
        supplies=tuple(supplies),
        errors=errors,
        updates_stopped=b.updates_stopped,
    )
