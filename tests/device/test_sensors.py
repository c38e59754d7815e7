"""Each sensor kind gives a reading, a retryable read error, or one clear line on why it cannot run.

The CPU sensor reads a fake sysfs tree, the DS18B20 the real w1thermsensor library pointed at a
fake 1-Wire folder; the Adafruit drivers are not installed here, so DHT22 and BME280 run against
small stand-ins of `board` and the driver modules.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from device.config import AgentConfig, BrokerUrl
from device.errors import SensorError, SensorReadError
from device.sensors import make_sensor
from device.sensors.bme280 import Bme280Sensor
from device.sensors.cpu import CpuSensor
from device.sensors.dht22 import Dht22Sensor
from device.sensors.ds18b20 import Ds18b20Sensor
from device.sensors.simulated import SimulatedSensor


def agent_config(sensor: str, **kwargs: Any) -> AgentConfig:
    broker = BrokerUrl.parse("mqtt://127.0.0.1:1")
    return AgentConfig(sensor_id="s1", broker=broker, tls=None, sensor=sensor, **kwargs)


# -- cpu ------------------------------------------------------------------------------------


def thermal_zone(root: Path, n: int, kind: str, temp: str | None) -> Path:
    zone = root / f"thermal_zone{n}"
    zone.mkdir(parents=True)
    (zone / "type").write_text(kind + "\n")
    if temp is not None:
        (zone / "temp").write_text(temp)
    return zone


def test_cpu_prefers_the_package_zone_over_acpi(tmp_path: Path) -> None:
    thermal_zone(tmp_path, 0, "acpitz", "30000\n")
    thermal_zone(tmp_path, 1, "x86_pkg_temp", "45500\n")
    sensor = CpuSensor(tmp_path)
    assert sensor.read() == {"temperature": 45.5}
    assert sensor.zone_type == "x86_pkg_temp"


def test_cpu_falls_back_to_the_first_zone_with_a_readable_temp(tmp_path: Path) -> None:
    broken = thermal_zone(tmp_path, 0, "acpitz", None)
    (broken / "temp").mkdir()  # reading it fails with an OSError, as ENODATA does on real zones
    thermal_zone(tmp_path, 2, "iwlwifi_1", "38123\n")
    thermal_zone(tmp_path, 10, "battery", "25000\n")
    assert CpuSensor(tmp_path).read() == {"temperature": 38.12}


def test_cpu_without_thermal_zones_says_so(tmp_path: Path) -> None:
    with pytest.raises(SensorError) as info:
        CpuSensor(tmp_path)
    assert str(info.value) == (
        f"no thermal zone under {tmp_path}: this machine exposes no CPU temperature; "
        "choose another --sensor"
    )


def test_cpu_garbage_or_vanished_temp_is_a_read_error(tmp_path: Path) -> None:
    zone = thermal_zone(tmp_path, 0, "cpu-thermal", "51000\n")
    sensor = CpuSensor(tmp_path)
    assert sensor.read() == {"temperature": 51.0}
    (zone / "temp").write_text("garbage\n")
    with pytest.raises(SensorReadError, match="'garbage', not millidegrees"):
        sensor.read()
    (zone / "temp").unlink()
    with pytest.raises(SensorReadError, match="cannot read"):
        sensor.read()


# -- ds18b20, with the real w1thermsensor ---------------------------------------------------

# What the kernel's w1-therm driver writes: the scratchpad with its CRC verdict, then t= in m°C.
W1_GOOD = "56 01 4b 46 7f ff 0a 10 d1 : crc=d1 YES\n56 01 4b 46 7f ff 0a 10 d1 t=21375\n"
W1_BAD_CRC = "56 01 4b 46 7f ff 0a 10 d1 : crc=d2 NO\n56 01 4b 46 7f ff 0a 10 d1 t=21375\n"
W1_POWER_ON = "50 05 4b 46 7f ff 0c 10 1c : crc=1c YES\n50 05 4b 46 7f ff 0c 10 1c t=85000\n"


@pytest.fixture
def w1_bus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty 1-Wire devices folder that w1thermsensor reads instead of /sys/bus/w1/devices."""
    # Importing w1thermsensor otherwise runs modprobe and waits for the real bus.
    monkeypatch.setenv("W1THERMSENSOR_NO_KERNEL_MODULE", "1")
    import w1thermsensor

    devices = tmp_path / "devices"
    devices.mkdir()
    (devices / "w1_bus_master1").mkdir()  # the real folder holds the bus master too
    monkeypatch.setattr(w1thermsensor.W1ThermSensor, "BASE_DIRECTORY", devices)
    yield devices


def add_w1_sensor(devices: Path, name: str, content: str) -> Path:
    (devices / name).mkdir()
    slave = devices / name / "w1_slave"
    slave.write_text(content)
    return slave


def test_ds18b20_reads_the_first_sensor(w1_bus: Path) -> None:
    add_w1_sensor(w1_bus, "28-000005e2fdc3", W1_GOOD)
    sensor = Ds18b20Sensor()
    assert sensor.sensor_id == "000005e2fdc3"
    assert sensor.read() == {"temperature": 21.375}


def test_ds18b20_picks_the_sensor_by_id_with_or_without_family_prefix(w1_bus: Path) -> None:
    add_w1_sensor(w1_bus, "28-000005e2fdc3", W1_GOOD)
    below_zero = W1_GOOD.replace("56 01", "5e ff").replace("t=21375", "t=-10125")
    add_w1_sensor(w1_bus, "28-0000075a1b2c", below_zero)
    assert Ds18b20Sensor("0000075a1b2c").read() == {"temperature": -10.125}
    assert Ds18b20Sensor("28-0000075a1b2c").sensor_id == "0000075a1b2c"
    # As the agent gets it: --w1-id, a setting like any other.
    chosen = make_sensor(agent_config("ds18b20", w1_id="28-0000075a1b2c"))
    assert chosen.read() == {"temperature": -10.125}


def test_ds18b20_crc_failure_is_a_read_error_and_recovers(w1_bus: Path) -> None:
    slave = add_w1_sensor(w1_bus, "28-000005e2fdc3", W1_BAD_CRC)
    sensor = Ds18b20Sensor()
    with pytest.raises(SensorReadError, match="000005e2fdc3: CRC check failed"):
        sensor.read()
    slave.write_text(W1_GOOD)
    assert sensor.read() == {"temperature": 21.375}


def test_ds18b20_power_on_value_is_a_read_error(w1_bus: Path) -> None:
    add_w1_sensor(w1_bus, "28-000005e2fdc3", W1_POWER_ON)
    with pytest.raises(SensorReadError, match=r"85\.0 power-on value"):
        Ds18b20Sensor().read()


def test_ds18b20_unplugged_after_start_is_a_read_error(w1_bus: Path) -> None:
    slave = add_w1_sensor(w1_bus, "28-000005e2fdc3", W1_GOOD)
    sensor = Ds18b20Sensor()
    slave.unlink()
    with pytest.raises(SensorReadError, match="stopped answering; check the wiring"):
        sensor.read()


def test_ds18b20_empty_bus_is_a_sensor_error_with_the_overlay_hint(w1_bus: Path) -> None:
    with pytest.raises(SensorError) as info:
        Ds18b20Sensor()
    message = str(info.value)
    assert f"no DS18B20 found under {w1_bus}" in message
    assert "dtoverlay=w1-gpio in /boot/config.txt" in message
    assert "\n" not in message


def test_ds18b20_unknown_id_is_named(w1_bus: Path) -> None:
    add_w1_sensor(w1_bus, "28-000005e2fdc3", W1_GOOD)
    with pytest.raises(SensorError, match="no DS18B20 with id 00000bad0000 found"):
        Ds18b20Sensor("00000bad0000")


def test_ds18b20_without_the_bus_folder_says_to_enable_it(w1_bus: Path) -> None:
    w1_bus.rename(w1_bus.with_name("gone"))
    with pytest.raises(SensorError, match=r"no 1-Wire bus at .*devices.*dtoverlay=w1-gpio"):
        Ds18b20Sensor()


def test_ds18b20_kernel_modules_that_do_not_load_are_a_sensor_error(
    w1_bus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from w1thermsensor.errors import KernelModuleLoadError

    def failing_import(module: str, sensor: str, package: str) -> types.ModuleType:
        raise KernelModuleLoadError()  # what `import w1thermsensor` raises when modprobe fails

    monkeypatch.setattr("device.sensors.ds18b20.import_driver", failing_import)
    with pytest.raises(SensorError, match=r"kernel modules \(w1-gpio, w1-therm\) did not load"):
        Ds18b20Sensor()


def test_ds18b20_without_w1thermsensor_names_the_pi_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "w1thermsensor", None)  # as if not installed
    with pytest.raises(SensorError) as info:
        Ds18b20Sensor()
    assert "sensor ds18b20 needs the w1thermsensor library" in str(info.value)
    assert "pip install 'sensor-pipeline[pi]'" in str(info.value)


# -- the Adafruit drivers, not installed here -----------------------------------------------


@pytest.mark.skipif(
    importlib.util.find_spec("adafruit_dht") is not None,
    reason="adafruit-circuitpython-dht is installed",
)
def test_dht22_without_its_driver_names_the_pi_extra() -> None:
    with pytest.raises(SensorError) as info:
        Dht22Sensor()
    assert "sensor dht22 needs the adafruit-circuitpython-dht library" in str(info.value)
    assert "pip install 'sensor-pipeline[pi]'" in str(info.value)


@pytest.mark.skipif(
    importlib.util.find_spec("adafruit_bme280") is not None,
    reason="adafruit-circuitpython-bme280 is installed",
)
def test_bme280_without_its_driver_names_the_pi_extra() -> None:
    with pytest.raises(SensorError) as info:
        Bme280Sensor()
    assert "sensor bme280 needs the adafruit-circuitpython-bme280 library" in str(info.value)
    assert "pip install 'sensor-pipeline[pi]'" in str(info.value)


class Pin:
    def __init__(self, name: str) -> None:
        self.name = name


@pytest.fixture
def fake_board(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """Blinka's `board` on a Pi: D-numbered GPIO pins plus a few non-pin names."""
    board = types.ModuleType("board")
    for name in ("D4", "D17", "D27", "D22", "SCL", "SDA"):
        setattr(board, name, Pin(name))
    board.board_id = "RASPBERRY_PI_4B"  # type: ignore[attr-defined]
    board.I2C = lambda: "the i2c bus"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "board", board)
    return board


class FakeDHT22:
    def __init__(self, outcomes: list[object], pin: Pin, use_pulseio: bool = True) -> None:
        self.outcomes = outcomes
        self.pin = pin
        self.use_pulseio = use_pulseio
        self.exited = False

    @property
    def temperature(self) -> object:
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    @property
    def humidity(self) -> float:
        return 48.13

    def exit(self) -> None:
        self.exited = True


@pytest.fixture
def fake_dht(monkeypatch: pytest.MonkeyPatch, fake_board: types.ModuleType) -> list[Any]:
    """Install a fake adafruit_dht; returns [outcomes of .temperature, then each DHT22 made]."""
    outcomes: list[object] = [22.4]
    made: list[Any] = [outcomes]
    module = types.ModuleType("adafruit_dht")

    def dht22(pin: Pin, use_pulseio: bool = True) -> FakeDHT22:
        if pin.name == "SDA":
            raise RuntimeError("GPIO busy")
        device = FakeDHT22(outcomes, pin, use_pulseio)
        made.append(device)
        return device

    module.DHT22 = dht22  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "adafruit_dht", module)
    return made


def test_dht22_checksum_error_then_a_reading(
    fake_dht: list[Any], fake_board: types.ModuleType
) -> None:
    outcomes = fake_dht[0]
    outcomes[:] = [RuntimeError("Checksum did not validate. Try again."), 22.4]
    sensor = Dht22Sensor("D4")
    device = fake_dht[1]
    assert device.pin is fake_board.D4
    assert device.use_pulseio is False
    with pytest.raises(SensorReadError, match="DHT22 on D4: Checksum did not validate"):
        sensor.read()
    assert sensor.read() == {"temperature": 22.4, "humidity": 48.13}
    assert sensor.retry_delay == 2.0


def test_dht22_none_value_is_a_read_error(fake_dht: list[Any]) -> None:
    fake_dht[0][:] = [None, 19.0]
    sensor = Dht22Sensor()
    with pytest.raises(SensorReadError, match="no value yet"):
        sensor.read()
    assert sensor.read() == {"temperature": 19.0, "humidity": 48.13}


def test_dht22_close_releases_the_pin(fake_dht: list[Any]) -> None:
    sensor = Dht22Sensor()
    sensor.close()
    assert fake_dht[1].exited


@pytest.mark.parametrize("pin", ["D99", "I2C", "board_id", "__name__", "gpio4"])
def test_dht22_unknown_pin_names_valid_ones(fake_dht: list[Any], pin: str) -> None:
    with pytest.raises(SensorError) as info:
        Dht22Sensor(pin)
    assert f"no pin {pin!r} on this board" in str(info.value)
    assert "D4, D17, D22, D27" in str(info.value)
    assert len(fake_dht) == 1  # no device was opened


def test_dht22_pin_that_cannot_be_opened_is_a_sensor_error(fake_dht: list[Any]) -> None:
    with pytest.raises(SensorError, match="sensor dht22: cannot open pin SDA: GPIO busy"):
        Dht22Sensor("SDA")


class FakeBME280:
    def __init__(self, read_failures: list[OSError]) -> None:
        self.read_failures = read_failures

    @property
    def temperature(self) -> float:
        if self.read_failures:
            raise self.read_failures.pop(0)
        return 23.456789

    relative_humidity = 41.239
    pressure = 1008.7351


@pytest.fixture
def fake_bme280(monkeypatch: pytest.MonkeyPatch, fake_board: types.ModuleType) -> dict[int, Any]:
    """Install a fake adafruit_bme280.basic; map address -> what answers there (edit per test)."""
    bus: dict[int, Any] = {0x76: FakeBME280([])}
    package = types.ModuleType("adafruit_bme280")
    basic = types.ModuleType("adafruit_bme280.basic")

    def bme280_i2c(i2c: object, address: int = 0x77) -> FakeBME280:
        assert i2c == "the i2c bus"
        found = bus.get(address)
        if found is None:
            raise ValueError(f"No I2C device at address: 0x{address:x}")
        if isinstance(found, Exception):
            raise found
        return found  # type: ignore[no-any-return]

    basic.Adafruit_BME280_I2C = bme280_i2c  # type: ignore[attr-defined]
    package.basic = basic  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "adafruit_bme280", package)
    monkeypatch.setitem(sys.modules, "adafruit_bme280.basic", basic)
    return bus


def test_bme280_reads_three_values(fake_bme280: dict[int, Any]) -> None:
    reading = Bme280Sensor(0x76).read()
    assert reading == {"temperature": 23.46, "humidity": 41.24, "pressure": 1008.74}


def test_bme280_wrong_address_names_both_usual_ones(fake_bme280: dict[int, Any]) -> None:
    with pytest.raises(SensorError) as info:
        Bme280Sensor(0x77)
    message = str(info.value)
    assert "no device at I2C address 0x77" in message
    assert "0x76 or 0x77" in message
    assert "--i2c-address" in message


def test_bme280_other_chip_at_the_address_is_named(fake_bme280: dict[int, Any]) -> None:
    fake_bme280[0x77] = RuntimeError("Failed to find BME280! Chip ID 0x58")
    with pytest.raises(SensorError, match=r"device at 0x77 is not a BME280 \(.*Chip ID 0x58\)"):
        Bme280Sensor(0x77)


def test_bme280_bus_error_is_a_read_error_and_recovers(fake_bme280: dict[int, Any]) -> None:
    fake_bme280[0x76].read_failures.append(OSError(121, "Remote I/O error"))
    sensor = Bme280Sensor()
    with pytest.raises(SensorReadError, match=r"BME280 at 0x76: .*Remote I/O error"):
        sensor.read()
    assert sensor.read()["pressure"] == 1008.74


def test_bme280_without_i2c_enabled_says_how(
    fake_bme280: dict[int, Any], fake_board: types.ModuleType
) -> None:
    def no_bus() -> None:
        raise FileNotFoundError(2, "No such file or directory", "/dev/i2c-1")

    fake_board.I2C = no_bus  # type: ignore[attr-defined]
    with pytest.raises(SensorError, match=r"cannot open the I2C bus .*/dev/i2c-1.*raspi-config"):
        Bme280Sensor()


# -- make_sensor ----------------------------------------------------------------------------


def test_make_sensor_simulated() -> None:
    assert isinstance(make_sensor(agent_config("simulated")), SimulatedSensor)


def test_make_sensor_cpu_on_this_machine() -> None:
    # The answer depends on the machine: a CpuSensor where Linux exposes zones, else the error.
    if any(Path("/sys/class/thermal").glob("thermal_zone*")):
        sensor = make_sensor(agent_config("cpu"))
        assert isinstance(sensor, CpuSensor)
    else:
        with pytest.raises(SensorError, match="no thermal zone under /sys/class/thermal"):
            make_sensor(agent_config("cpu"))


def test_make_sensor_ds18b20(w1_bus: Path) -> None:
    with pytest.raises(SensorError, match="no DS18B20 found"):
        make_sensor(agent_config("ds18b20"))
    add_w1_sensor(w1_bus, "28-000005e2fdc3", W1_GOOD)
    sensor = make_sensor(agent_config("ds18b20"))
    assert isinstance(sensor, Ds18b20Sensor)
    assert sensor.read() == {"temperature": 21.375}


def test_make_sensor_dht22_uses_the_configured_pin(
    fake_dht: list[Any], fake_board: types.ModuleType
) -> None:
    sensor = make_sensor(agent_config("dht22", pin="D17"))
    assert isinstance(sensor, Dht22Sensor)
    assert fake_dht[1].pin is fake_board.D17
    with pytest.raises(SensorError, match="no pin 'D99'"):
        make_sensor(agent_config("dht22", pin="D99"))


def test_make_sensor_bme280_uses_the_configured_address(fake_bme280: dict[int, Any]) -> None:
    assert isinstance(make_sensor(agent_config("bme280")), Bme280Sensor)
    with pytest.raises(SensorError, match="no device at I2C address 0x77"):
        make_sensor(agent_config("bme280", i2c_address=0x77))


def test_make_sensor_unknown_kind() -> None:
    with pytest.raises(SensorError, match="unknown sensor 'thermocouple'"):
        make_sensor(agent_config("thermocouple"))
