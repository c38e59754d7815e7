"""`cloud dashboard` in a real browser (Debian's Chromium, headless): the devices of a
running fleet, a reading published after the page loaded on its chart within 2 seconds, a
killed agent offline, and a clear message when the broker or the table cannot be reached.

The dashboard runs in this process (a thread), its target a local stack made of a test
broker and moto's table, as tests/cloud/fleet.py does for the fleet commands; the page, the
agents and the browser are the real ones.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from cloud.alerts.state import AlertState, Episode, save_state
from cloud.aws import Endpoint
from cloud.cli import main as cloud_main
from cloud.dashboard.server import Dashboard, alerts_reader
from cloud.errors import ConfigError
from cloud.ingest.rule import to_item
from cloud.local.mosquitto import Mosquitto
from cloud.local.ports import free_port
from cloud.target import Target
from device.payload import Reading
from tests.browser import chromium, console_errors, screenshot
from tests.cloud.fleet import stack_target
from tests.conftest import BrokerFactory, Pki
from tests.mqtt import MqttClient, device_args, start_agent, wait_until

WATCHER = "dashboard"
#: What the page shows in a cell it has no value for.
NO_VALUE = "\N{EN DASH}"


def local_target(broker_port: int, aws: Endpoint, table: str, pki: Pki, root: Path) -> Target:
    return stack_target(broker_port, aws, table, pki, root, WATCHER)


@pytest.fixture
def broker(start_broker: BrokerFactory) -> Mosquitto:
    return start_broker()


@pytest.fixture
def target(broker: Mosquitto, aws: Endpoint, table: str, pki: Pki, tmp_path: Path) -> Target:
    """A local stack made of this test's broker and table."""
    return local_target(broker.config.port, aws, table, pki, tmp_path)


@pytest.fixture
def serve() -> Iterator[Callable[..., Dashboard]]:
    """Start dashboards (a free port each), stopped when the test ends."""
    running: list[tuple[Dashboard, threading.Thread]] = []

    def start(target: Target, alerts_state: Path | None = None) -> Dashboard:
        reader = alerts_reader(alerts_state) if alerts_state else None
        dashboard = Dashboard(target, "127.0.0.1", 0, reader)
        thread = threading.Thread(target=dashboard.run, daemon=True)
        thread.start()
        running.append((dashboard, thread))
        wait_until(lambda: answers(dashboard.url), 15, "the dashboard to answer")
        return dashboard

    yield start
    for dashboard, thread in running:
        dashboard.stop()
        thread.join(15)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (our http URL)
            return bool(response.status == 200)
    except OSError:
        return False


def get_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (our http URL)
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as driver:
        yield driver


def put_reading(aws: Endpoint, table: str, reading: Reading) -> None:
    item = to_item(reading.topic, reading.to_payload())
    aws.client("dynamodb").put_item(TableName=table, Item=item)


def row_text(browser: Any, sensor_id: str, column: str) -> str:
    found = browser.find_elements(By.CSS_SELECTOR, f'tr[data-id="{sensor_id}"] td.{column}')
    return str(found[0].text) if found else ""


def chart(browser: Any, sensor_id: str) -> list[list[float]] | None:
    data: list[list[float]] | None = browser.execute_script(
        "return window.dashboard.chartData(arguments[0])", sensor_id
    )
    return data


def test_page_shows_the_fleet_live_and_a_killed_agent_offline(
    broker: Mosquitto,
    target: Target,
    aws: Endpoint,
    table: str,
    pki: Pki,
    tmp_path: Path,
    device_id: str,
    tls_args: Callable[[str], list[str]],
    serve: Callable[..., Dashboard],
    browser: Any,
) -> None:
    port = broker.config.port
    steady, doomed, late = (f"{device_id}-{n}" for n in ("steady", "doomed", "late"))
    now = int(time.time() * 1000)
    # Half an hour of history for one device, in the table only.
    history = [Reading(steady, now - 1_800_000 + i * 60_000, i, 10.0 + i / 10) for i in range(30)]
    for reading in history:
        put_reading(aws, table, reading)
    agents = {
        sensor_id: start_agent(
            *device_args(port, sensor_id, tls_args(sensor_id), tmp_path / sensor_id),
            "--interval",
            "0.5",
            "--health-interval",
            "1",
        )
        for sensor_id in (steady, doomed)
    }
    dashboard = serve(target)
    browser.get(dashboard.url)
    wait_until(
        lambda: browser.execute_script("return window.dashboard.ready"), 20, "the page to load"
    )

    # Both agents listed, online, with a reading a moment old and their health.
    for sensor_id in (steady, doomed):
        wait_until(
            lambda s=sensor_id: row_text(browser, s, "status") == "online"
            and row_text(browser, s, "temperature").endswith("°C"),
            20,
            f"{sensor_id} online with a reading",
        )
        wait_until(lambda s=sensor_id: row_text(browser, s, "outbox") != NO_VALUE, 20, "its health")
    # The table's history is on the chart, with the live readings after it. (A device the
    # page learns of after its snapshot has its history fetched then.)
    wait_until(
        lambda: len((chart(browser, steady) or [[]])[0]) > len(history), 10, "history charted"
    )
    data = chart(browser, steady)
    assert data is not None
    assert [r.ts for r in history] == data[0][: len(history)]
    assert [r.temperature for r in history] == data[1][: len(history)]

    # A reading published after the page loaded: on its chart within 2 seconds.
    client = MqttClient.open(port, pki.device(late), f"{late}-t")
    try:
        sent = Reading(late, int(time.time() * 1000), 0, 42.125)
        started = time.monotonic()
        info = client.client.publish(sent.topic, sent.to_payload(), qos=1)
        wait_until(
            lambda: (data := chart(browser, late)) is not None and sent.ts in data[0],
            2,
            "the new reading on its chart",
            every=0.05,
        )
        elapsed = time.monotonic() - started
        assert chart(browser, late) == [[sent.ts], [42.125]]
        client.wait(lambda: info.mid in client.acks, "a PUBACK")
    finally:
        client.close()
    assert elapsed < 2
    wait_until(lambda: row_text(browser, late, "temperature") == "42.13 °C", 2, "its row")

    # The last 15 minutes instead of the hour: the history older than that leaves the chart.
    Select(browser.find_element(By.ID, "range")).select_by_value("15")
    quarter = int(time.time() * 1000) - 15 * 60_000
    newer = [r.ts for r in history if r.ts > quarter + 5_000]
    wait_until(
        lambda: (data := chart(browser, steady)) is not None
        and set(newer) <= set(data[0])
        and min(data[0]) > quarter,
        10,
        "the 15-minute range charted",
    )

    # A killed agent: offline on the page within seconds (its will, sent by the broker).
    agents[doomed].send_signal(signal.SIGKILL)
    agents[doomed].wait(10)
    wait_until(lambda: row_text(browser, doomed, "status") == "offline", 10, "offline shown")
    assert row_text(browser, steady, "status") == "online"

    assert console_errors(browser) == []
    shot = screenshot(browser, "dashboard.png")
    assert shot.stat().st_size > 10_000
    for agent in agents.values():
        agent.terminate()


def test_unreachable_broker_and_table_are_said_on_the_page(
    aws: Endpoint,
    table: str,
    pki: Pki,
    tmp_path: Path,
    serve: Callable[..., Dashboard],
    browser: Any,
) -> None:
    """Nothing listens on the broker's port, and the table is one that does not exist."""
    target = local_target(free_port(), aws, f"{table}-missing", pki, tmp_path)
    dashboard = serve(target)
    browser.get(dashboard.url)
    banner = browser.find_element(By.ID, "banner")
    wait_until(
        lambda: "Live readings unavailable: cannot reach the broker" in banner.text
        and f"Readings history unavailable: table {table}-missing not found" in banner.text,
        15,
        f"both problems on the banner (it says {banner.text!r})",
    )
    assert browser.find_element(By.TAG_NAME, "h1").text == "Sensors"
    screenshot(browser, "dashboard-unreachable.png")
    assert console_errors(browser) == []  # what is down is the page's message, not its failure


def test_active_alerts_of_the_watcher_are_listed_and_go_when_cleared(
    target: Target,
    tmp_path: Path,
    serve: Callable[..., Dashboard],
    browser: Any,
) -> None:
    """The page lists what the state file of `cloud alerts watch` holds active, as the
    watcher writes it (cloud.alerts.state), and drops it once the watcher does."""
    state_path = tmp_path / "alerts-state.json"
    since = int(time.time() * 1000) - 600_000
    episode = Episode(
        "freezer warm", "freezer-1", "threshold", since, since, 9.5, "temperature 9.5 > 8 for 10m"
    )
    save_state(state_path, AlertState(episodes={(episode.rule, episode.sensor_id): episode}))
    dashboard = serve(target, state_path)
    browser.get(dashboard.url)

    def items() -> list[str]:
        # Read in one go: the list is redrawn whole when the alerts change.
        texts: list[str] = browser.execute_script(
            "return Array.from(document.querySelectorAll('#alert-list li'), e => e.textContent)"
        )
        return texts

    wait_until(lambda: len(items()) == 1 and items()[0].startswith("freezer warm"), 10, "it")
    assert items() == ["freezer warm · freezer-1: temperature 9.5 > 8 for 10m"]
    save_state(state_path, AlertState())
    wait_until(lambda: items() == ["none"], 10, f"the alert gone (the page shows {items()})")


def test_the_live_stream_comes_back_with_the_broker(
    broker: Mosquitto,
    target: Target,
    pki: Pki,
    device_id: str,
    serve: Callable[..., Dashboard],
) -> None:
    """Killed, the broker is said to be gone; restarted on its port, the dashboard is back on
    its own and shows readings sent after."""
    dashboard = serve(target)

    def sources() -> dict[str, Any]:
        return dict(get_json(f"{dashboard.url}api/devices")[1]["sources"])

    wait_until(lambda: sources()["broker"] is None, 10, "the stream connected")
    broker.kill()
    wait_until(lambda: sources()["broker"] is not None, 10, "the broker said gone")
    assert sources()["broker"].startswith(f"lost the broker at mqtts://127.0.0.1:{broker.config.port}")
    broker.start()
    wait_until(lambda: sources()["broker"] is None, 20, "the stream back")
    client = MqttClient.open(broker.config.port, pki.device(device_id), f"{device_id}-t")
    try:
        sent = Reading(device_id, int(time.time() * 1000), 0, 12.5)
        info = client.client.publish(sent.topic, sent.to_payload(), qos=1)
        client.wait(lambda: info.mid in client.acks, "a PUBACK")
    finally:
        client.close()

    def newest() -> Any:
        devices = get_json(f"{dashboard.url}api/devices")[1]["devices"]
        return next((d["reading"] for d in devices if d["id"] == device_id), None)

    wait_until(lambda: newest() is not None, 10, "the reading sent after the restart")
    assert newest() == {"ts": sent.ts, "seq": 0, "temperature": 12.5}


def test_history_refuses_a_bad_id_or_range_in_one_line(
    target: Target,
    serve: Callable[..., Dashboard],
) -> None:
    dashboard = serve(target)
    status, body = get_json(f"{dashboard.url}api/history?id=a%2Fb&minutes=60")
    assert status == 400
    assert body["error"].startswith("id: ")
    status, body = get_json(f"{dashboard.url}api/history?id=s1&minutes=99999")
    assert (status, body) == (400, {"error": "minutes: one of 15, 60, 360, 1440"})
    status, body = get_json(f"{dashboard.url}api/history?id=s1&minutes=15")
    assert (status, body) == (200, {"ts": [], "temperature": []})


def test_a_page_reached_by_another_name_is_refused(
    target: Target,
    serve: Callable[..., Dashboard],
) -> None:
    """A site elsewhere that rebinds its own name to 127.0.0.1 gets nothing of the fleet."""
    dashboard = serve(target)
    port = dashboard.url.rsplit(":", 1)[1].rstrip("/")
    for host, status in ((f"evil.example:{port}", 400), (f"localhost:{port}", 200)):
        url = f"{dashboard.url}api/devices"
        request = urllib.request.Request(url, headers={"Host": host})  # noqa: S310 (ours)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (ours)
                got = response.status
        except urllib.error.HTTPError as exc:
            got = exc.code
        assert got == status, host


def test_port_in_use_is_one_line(
    aws: Endpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        monkeypatch.chdir(tmp_path)
        result = CliRunner().invoke(
            cloud_main,
            ["dashboard", "--port", str(port), "--target", "aws", "--endpoint-url", str(aws.url)],
        )
    assert result.exit_code == 1
    assert result.output == (
        f"Error: --port {port}: something else listens on 127.0.0.1:{port}; give another "
        "--port (0 picks a free one)\n"
    )


def test_a_second_dashboard_on_the_same_stack_is_refused(
    target: Target,
    serve: Callable[..., Dashboard],
) -> None:
    """Both would be the `dashboard` client, and throw each other off the broker in turn."""
    serve(target)
    with pytest.raises(ConfigError) as refused:
        Dashboard(target, "127.0.0.1", 0)
    assert str(refused.value) == (
        f"another process (pid {os.getpid()}) watches this stack's broker as `dashboard`, and "
        "the broker names a client by its certificate: a second would throw it off; stop that "
        "one first"
    )
