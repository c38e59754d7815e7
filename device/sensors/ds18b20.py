"""A DS18B20 on the Raspberry Pi's 1-Wire bus, read through w1thermsensor."""

from __future__ import annotations

from typing import Any

from device.errors import AgentError, SensorError, SensorReadError
from device.sensors import import_driver

ENABLE_HINT = (
    "check the wiring (data on GPIO4 with a 4.7k pull-up) and enable the bus with "
    "dtoverlay=w1-gpio in /boot/config.txt (/boot/firmware/config.txt on Bookworm), then reboot"
)


class Ds18b20Sensor:
    retry_delay = 1.0

    def __init__(self, sensor_id: str | None = None) -> None:
        w1 = _import_w1thermsensor()
        self._w1 = w1
        # Accept the folder name as `ls /sys/bus/w1/devices` shows it ("28-0000...") too.
        if sensor_id is not None and sensor_id.startswith("28-"):
            sensor_id = sensor_id[3:]
        base = w1.W1ThermSensor.BASE_DIRECTORY
        try:
            self._device: Any = w1.W1ThermSensor(w1.Sensor.DS18B20, sensor_id)
        except w1.NoSensorFoundError:
            wanted = f"DS18B20 with id {sensor_id}" if sensor_id else "DS18B20"
            raise SensorError(
                f"sensor ds18b20: no {wanted} found under {base}; {ENABLE_HINT}"
            ) from None
        except OSError as exc:
            # The folder is missing when the w1-gpio overlay is not loaded.
            raise SensorError(
                f"sensor ds18b20: no 1-Wire bus at {base} ({exc.strerror}); {ENABLE_HINT}"
            ) from None
        self.sensor_id: str = self._device.id

    def read(self) -> dict[str, float]:
        w1 = self._w1
        try:
            value = self._device.get_temperature()
        except w1.SensorNotReadyError:
            raise SensorReadError(
                f"DS18B20 {self.sensor_id}: CRC check failed or not ready; a noisy line or a "
                "conversion still running"
            ) from None
        except w1.ResetValueError:
            raise SensorReadError(
                f"DS18B20 {self.sensor_id}: got the 85.0 power-on value instead of a measurement; "
                "if it persists, check the sensor's power supply"
            ) from None
        except w1.NoSensorFoundError:
            # A loose wire drops the device from the bus; it often comes back, so retry.
            raise SensorReadError(
                f"DS18B20 {self.sensor_id} stopped answering; check the wiring"
            ) from None
        except (OSError, ValueError, IndexError) as exc:
            # A truncated w1_slave file (read while the kernel rewrites it) fails to parse.
            raise SensorReadError(f"DS18B20 {self.sensor_id}: bad read ({exc})") from None
        # The DS18B20 counts in sixteenths of a degree, exact in a float: no rounding needed.
        return {"temperature": float(value)}

    def close(self) -> None:
        pass


def _import_w1thermsensor() -> Any:
    try:
        return import_driver("w1thermsensor", "ds18b20", "w1thermsensor")
    except AgentError:
        raise
    except Exception as exc:
        # Importing w1thermsensor runs modprobe and raises KernelModuleLoadError when the bus
        # does not appear; the class cannot be named before the import has succeeded.
        if type(exc).__name__ != "KernelModuleLoadError":
            raise
        raise SensorError(
            "sensor ds18b20: the 1-Wire kernel modules (w1-gpio, w1-therm) did not load; "
            + ENABLE_HINT
        ) from None
