"""The dashboard's live stream on AWS (cloud.live.iot): IoT Core over WebSockets, signed
with the user's AWS credentials. Nothing here speaks IoT Core, so what is tested is what a
user sees when it cannot be reached: the reason, on the page's banner, and retries."""

from __future__ import annotations

import threading

import pytest

from cloud.live.iot import IotLiveStream
from cloud.local.ports import free_port


def test_an_unreachable_iot_endpoint_is_reported_and_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Signing needs credentials; none of these leave the machine.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example")
    port = free_port()  # nothing listens there
    states: list[str | None] = []
    two = threading.Event()

    def on_state(problem: str | None) -> None:
        states.append(problem)
        if len(states) >= 2:
            two.set()

    stream = IotLiveStream(
        "127.0.0.1", "us-east-1", "dashboard", lambda e: None, on_state, port=port
    )
    stream.start()
    try:
        assert two.wait(20), f"two failed attempts reported; got {states}"
    finally:
        stream.stop()
    assert all(
        s is not None and s.startswith(f"cannot connect to IoT Core at wss://127.0.0.1:{port} (")
        and s.endswith("); retrying")
        for s in states[:2]
    ), states
