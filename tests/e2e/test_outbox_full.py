"""The outbox full while the broker is down: --outbox-max 50, 200 readings as fast as they
come. The policy decides which 50 survive, those arrive once the broker is up, and the
summary line counts the 150 dropped."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cloud.local.mosquitto import Mosquitto
from tests.e2e.conftest import Agents, summary_line
from tests.mqtt import Subscriber, wait_until
from tests.outbox import outbox_state

OUTBOX_MAX = 50
COUNT = 200


@pytest.mark.parametrize(
    ("policy", "kept"),
    [
        ("drop-oldest", range(COUNT - OUTBOX_MAX, COUNT)),
        ("refuse-newest", range(OUTBOX_MAX)),
    ],
)
def test_full_outbox_applies_its_policy_and_counts_what_it_dropped(
    policy: str,
    kept: range,
    start_broker: Callable[..., Mosquitto],
    subscribe: Callable[..., Subscriber],
    agents: Agents,
    device_id: str,
) -> None:
    broker = start_broker()
    sub = subscribe(broker.config.port, topics=(f"sensors/{device_id}/data",))
    broker.stop()  # the subscriber's session is saved; it waits for the broker to come back

    agent = agents.one(
        device_id,
        broker.config.port,
        "--count",
        str(COUNT),
        "--interval",
        "0",
        "--outbox-max",
        str(OUTBOX_MAX),
        "--outbox-full",
        policy,
    )
    outbox = agents.outbox(device_id)
    wait_until(
        lambda: outbox_state(outbox) == (COUNT, OUTBOX_MAX), 30, "200 readings taken", every=0.05
    )
    assert agent.alive(), "a full outbox is not a reason to stop"
    assert "outbox full" in agent.err()

    broker.start()
    assert agent.wait(60) == 0, agent.err()[-3000:]
    line = summary_line(agent.out(), device_id)
    assert f"acknowledged {OUTBOX_MAX}, buffered 0, dropped {COUNT - OUTBOX_MAX}," in line
    sub.wait_readings(device_id, OUTBOX_MAX)
    assert sorted({r["seq"] for r in sub.readings(device_id)}) == list(kept)
