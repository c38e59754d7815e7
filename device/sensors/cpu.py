"""The CPU's own temperature from Linux sysfs: works on any Pi or laptop, no wiring needed."""

from __future__ import annotations

import re
from pathlib import Path

from device.errors import SensorError, SensorReadError

# Zone types that measure the SoC or CPU package itself (Raspberry Pi, Rockchip/Amlogic, Intel,
# other ARM boards, AMD); other zones (acpitz, battery, wifi) can sit far from the chip.
PREFERRED_TYPES = ("cpu-thermal", "soc_thermal", "x86_pkg_temp", "cpu_thermal", "k10temp")


def _zone_number(path: Path) -> int:
    # Numeric order, so thermal_zone10 comes after thermal_zone2.
    match = re.search(r"(\d+)$", path.name)
    return int(match.group(1)) if match else -1


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


class CpuSensor:
    retry_delay = 0.5

    def __init__(self, thermal_root: Path = Path("/sys/class/thermal")) -> None:
        zones = sorted(thermal_root.glob("thermal_zone*"), key=_zone_number)
        if not zones:
            raise SensorError(
                f"no thermal zone under {thermal_root}: this machine exposes no CPU "
                "temperature; choose another --sensor"
            )
        # Some zones list a temp file that fails on read (ENODATA on some ACPI zones): skip them.
        readable = [z for z in zones if _read_text(z / "temp") is not None]
        if not readable:
            raise SensorError(
                f"no thermal zone under {thermal_root} has a readable temp file; "
                "choose another --sensor"
            )
        preferred = [z for z in readable if _read_text(z / "type") in PREFERRED_TYPES]
        preferred.sort(key=lambda z: PREFERRED_TYPES.index(_read_text(z / "type") or ""))
        zone = (preferred or readable)[0]
        self.zone_type = _read_text(zone / "type") or "unknown"
        self._temp = zone / "temp"

    def read(self) -> dict[str, float]:
        try:
            text = self._temp.read_text().strip()
        except OSError as exc:
            raise SensorReadError(f"cannot read {self._temp}: {exc}") from None
        try:
            millidegrees = int(text)
        except ValueError:
            raise SensorReadError(
                f"{self._temp} holds {text!r}, not millidegrees Celsius"
            ) from None
        return {"temperature": round(millidegrees / 1000, 2)}

    def close(self) -> None:
        pass
