"""A DHT22 (AM2302) temperature and humidity sensor on one GPIO pin, via Adafruit's driver."""

from __future__ import annotations

import re
from typing import Any

from device.errors import SensorError, SensorReadError
from device.sensors import import_driver


def _pin_examples(board: Any) -> str:
    pins = sorted(
        (name for name in dir(board) if re.fullmatch(r"D\d+", name)), key=lambda n: int(n[1:])
    )
    return ", ".join(pins[:8]) if pins else "D4, D17, D27"


class Dht22Sensor:
    # The DHT22 answers at most once every two seconds; sooner only repeats the last value.
    retry_delay = 2.0

    def __init__(self, pin: str = "D4") -> None:
        adafruit_dht = import_driver("adafruit_dht", "dht22", "adafruit-circuitpython-dht")
        board = import_driver("board", "dht22", "adafruit-blinka")
        board_pin = None if pin.startswith("_") else getattr(board, pin, None)
        # board also holds strings (board_id) and factories (I2C, SPI) that are not pins.
        if board_pin is None or callable(board_pin) or isinstance(board_pin, str):
            raise SensorError(
                f"sensor dht22: no pin {pin!r} on this board; give --pin as a GPIO name such as "
                f"{_pin_examples(board)} (D4 is GPIO4, physical pin 7)"
            )
        try:
            # Bit-banging instead of pulseio: pulseio needs a helper process that is often
            # left holding the pin after a crash ("GPIO busy").
            self._device: Any = adafruit_dht.DHT22(board_pin, use_pulseio=False)
        except Exception as exc:
            # Blinka's GPIO backends raise their own error types (lgpio.error, RuntimeError).
            raise SensorError(f"sensor dht22: cannot open pin {pin}: {exc}") from exc
        self.pin = pin

    def read(self) -> dict[str, float]:
        try:
            temperature = self._device.temperature
            humidity = self._device.humidity
        except (RuntimeError, OSError) as exc:
            # Checksum and timing misses are routine for a DHT22, read from user space.
            raise SensorReadError(f"DHT22 on {self.pin}: {exc}") from None
        if temperature is None or humidity is None:
            raise SensorReadError(f"DHT22 on {self.pin}: no value yet")
        return {"temperature": round(float(temperature), 2), "humidity": round(float(humidity), 2)}

    def close(self) -> None:
        # exit() releases the pin so the next run (or another program) can claim it.
        self._device.exit()
