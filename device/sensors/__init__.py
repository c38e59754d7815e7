"""Sensors: something that gives a temperature (and maybe humidity, pressure) when read.

Each kind lives in its own module and imports its driver only when chosen, so a laptop
never needs the Raspberry Pi libraries of the `[pi]` extra.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Protocol

from device.config import AgentConfig
from device.errors import SensorError


class Sensor(Protocol):
    #: How long to wait before retrying a failed read (a DHT22 needs two seconds).
    retry_delay: float

    def read(self) -> dict[str, float]:
        """One measurement: `temperature` in degrees Celsius, plus optional `humidity` (%)
        and `pressure` (hPa). Raises SensorReadError for a failed read worth retrying."""
        ...

    def close(self) -> None: ...


def import_driver(module: str, sensor: str, package: str) -> ModuleType:
    """Import a sensor's driver, or say which install brings it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise SensorError(
            f"sensor {sensor} needs the {package} library ({exc}); install the Raspberry Pi "
            "extra: pip install 'sensor-pipeline[pi]'"
        ) from None
    except (RuntimeError, NotImplementedError, ValueError) as exc:
        # Blinka raises these on a machine that is not a board it knows.
        raise SensorError(
            f"sensor {sensor}: {package} cannot run on this machine ({exc})"
        ) from None


def make_sensor(config: AgentConfig) -> Sensor:
    kind = config.sensor
    if kind == "simulated":
        from device.sensors.simulated import SimulatedSensor

        return SimulatedSensor(config.sensor_id, seed=config.seed)
    if kind == "cpu":
        from device.sensors.cpu import CpuSensor

        return CpuSensor()
    if kind == "ds18b20":
        from device.sensors.ds18b20 import Ds18b20Sensor

        return Ds18b20Sensor(config.w1_id)
    if kind == "dht22":
        from device.sensors.dht22 import Dht22Sensor

        return Dht22Sensor(pin=config.pin)
    if kind == "bme280":
        from device.sensors.bme280 import Bme280Sensor

        return Bme280Sensor(address=config.i2c_address)
    raise SensorError(f"unknown sensor {kind!r}")
