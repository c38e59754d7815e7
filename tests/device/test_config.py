"""Settings precedence (flag > environment > file > default) and the shipped examples."""

from __future__ import annotations

from pathlib import Path

import pytest

from device.config import load_config
from device.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_flag_beats_environment_beats_file_beats_default(tmp_path: Path):
    conf = tmp_path / "a.toml"
    conf.write_text('broker = "mqtt://file:1"\ninterval = 7\nqos = 0\ninflight = 9\n')
    env = {"DEVICE_AGENT_INTERVAL": "3", "DEVICE_AGENT_QOS": "1"}
    cfg = load_config("s1", {"interval": 1.5}, environ=env, config_file=conf)
    assert cfg.interval == 1.5  # flag
    assert cfg.qos == 1  # environment over file
    assert cfg.inflight == 9  # file over default
    assert cfg.flush_timeout == 10.0  # default
    assert str(cfg.broker) == "mqtt://file:1"


def test_a_wrong_value_names_where_it_was_read(tmp_path: Path):
    conf = tmp_path / "a.toml"
    conf.write_text('broker = "mqtt://h:1"\ninterval = "soon"\n')
    with pytest.raises(ConfigError, match=r"a\.toml: interval: 'soon' is not a valid float"):
        load_config("s1", {}, environ={}, config_file=conf)


def test_the_example_config_is_valid(tmp_path: Path):
    cfg = load_config(
        "sensor-3",
        {"broker": "mqtt://127.0.0.1:1883"},
        environ={},
        config_file=REPO / "config" / "device-agent.example.toml",
    )
    assert cfg.sensor == "simulated" and cfg.outbox_full == "drop-oldest"


def test_the_systemd_unit_runs_the_agent_for_its_instance_name():
    unit = (REPO / "config" / "device-agent@.service").read_text()
    assert "device-agent --id %i --config /etc/device-agent/%i.toml" in unit
    assert "StateDirectory=device-agent" in unit


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_number_setting_must_be_finite(value: str):
    with pytest.raises(ConfigError, match=f"'{value}' is not a valid float for interval"):
        load_config(
            "s1", {}, environ={"DEVICE_AGENT_INTERVAL": value, "DEVICE_AGENT_BROKER": "mqtt://h:1"}
        )
