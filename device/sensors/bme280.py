"""A Bosch BME280 (temperature, humidity, pressure) on the I2C bus, via Adafruit's driver."""

from __future__ import annotations

from typing import Any

from device.errors import SensorError, SensorReadError
from device.sensors import import_driver

ADDRESS_HINT = (
    "a BME280 answers at 0x76 or 0x77 (set by its SDO pin); pick one with --i2c-address, "
    "and see what is on the bus with: i2cdetect -y 1"
)


class Bme280Sensor:
    retry_delay = 0.5

    def __init__(self, address: int = 0x76) -> None:
        bme280 = import_driver("adafruit_bme280.basic", "bme280", "adafruit-circuitpython-bme280")
        board = import_driver("board", "bme280", "adafruit-blinka")
        self.address = address
        where = f"0x{address:02x}"
        try:
            i2c = board.I2C()
        except (OSError, ValueError, RuntimeError) as exc:
            # /dev/i2c-1 only exists once I2C is switched on.
            raise SensorError(
                f"sensor bme280: cannot open the I2C bus ({exc}); enable it with "
                "`sudo raspi-config nonint do_i2c 0` (or dtparam=i2c_arm=on) and reboot"
            ) from None
        try:
            self._device: Any = bme280.Adafruit_BME280_I2C(i2c, address=address)
        except (ValueError, OSError) as exc:
            raise SensorError(
                f"sensor bme280: no device at I2C address {where} ({exc}); {ADDRESS_HINT}"
            ) from None
        except RuntimeError as exc:
            # Something answered but its chip id is wrong: often a BMP280, which has no humidity.
            raise SensorError(
                f"sensor bme280: the device at {where} is not a BME280 ({exc})"
            ) from None

    def read(self) -> dict[str, float]:
        try:
            temperature = self._device.temperature
            humidity = self._device.relative_humidity
            pressure = self._device.pressure
        except OSError as exc:
            # A glitch on the bus (EIO, EREMOTEIO) fails one transfer; the next usually works.
            raise SensorReadError(f"BME280 at 0x{self.address:02x}: {exc}") from None
        return {
            "temperature": round(float(temperature), 2),
            "humidity": round(float(humidity), 2),
            "pressure": round(float(pressure), 2),
        }

    def close(self) -> None:
        # board.I2C() is a shared singleton; deinit here would break anyone else using it.
        pass
