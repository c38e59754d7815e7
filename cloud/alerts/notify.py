"""Where notifications go: stdout (a line each, or JSON lines), a webhook (a JSON POST), an
SNS topic; and the gate that keeps a storm from becoming a flood.

Every notifier sends the same JSON (`Notification.to_json`, or a `held` summary). The
webhook and SNS are remote: they may be slow or down, so they are called from a thread of
their own (cloud.alerts.watch) with a timeout and a bounded number of attempts; a failure is
logged, never raised into the evaluation.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Protocol

from cloud.alerts.engine import CLEARED, Notification
from cloud.errors import ConfigError, PipelineError, StackNotFound
from cloud.timeparse import iso_ms

if TYPE_CHECKING:
    from cloud.aws import Endpoint
    from cloud.target import Target

log = logging.getLogger(__name__)

HELD = "held"
WINDOW_MS = 60_000


class NotifyError(PipelineError):
    """A remote notifier did not take a notification, after every attempt."""


class Remote(Protocol):
    """A notifier reached over the network."""

    name: str

    def send(self, body: dict[str, Any]) -> None:
        """Deliver `body` or raise NotifyError."""


def text_line(body: dict[str, Any]) -> str:
    """A notification's JSON as the one line stdout shows."""
    if body["event"] == HELD:
        return f"{body['at']} HELD    {body['message']}"
    word = "FIRED  " if body["event"] == "fired" else "CLEARED"
    return f"{body['at']} {word} {body['rule']} {body['sensor_id']}: {body['message']}"


@dataclass
class Stdout:
    """One line per notification, flushed at once: a pipe reader sees it as it happens."""

    stream: IO[str]
    fmt: str = "text"  # or "json"

    def write(self, body: dict[str, Any]) -> None:
        line = json.dumps(body, sort_keys=False) if self.fmt == "json" else text_line(body)
        self.stream.write(line + "\n")
        self.stream.flush()


@dataclass
class Webhook:
    """POST the JSON to `url`; a 2xx answer is delivery. Transport errors and 5xx/429 are
    tried again, up to `attempts` in all with a doubling pause; a 4xx other than 429 is the
    receiver refusing this body, which another try would not change."""

    url: str = field(repr=False)
    timeout: float = 5.0
    attempts: int = 3
    pause: float = 0.5
    name: str = "webhook"
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)
    shown: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"--webhook {self.url!r}: give an http:// or https:// URL")
        # A webhook's path and query often hold its secret (a chat service's token): the
        # logs show only where it goes.
        self.shown = f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"

    def send(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        last = ""
        for attempt in range(self.attempts):
            if attempt:
                self.sleep(self.pause * 2 ** (attempt - 1))
            # The scheme is http(s), checked on construction.
            request = urllib.request.Request(  # noqa: S310
                self.url,
                data=data,
                method="POST",
                headers={"Content-Type": "application/json", "User-Agent": "cloud-alerts"},
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as answer:  # noqa: S310
                    answer.read()
                return
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code} {exc.reason}"
                if 400 <= exc.code < 500 and exc.code != 429:
                    break
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                last = f"{type(reason).__name__}: {reason}" if str(reason) else repr(reason)
        raise NotifyError(f"webhook {self.shown}/...: {last}")


@dataclass
class Sns:
    """Publish the JSON to an SNS topic (the stack's AlertsTopicArn on AWS): subscribers get
    it as the message, with a short subject for e-mail."""

    client: Any  # boto3's SNS client
    topic_arn: str
    name: str = "sns"

    def send(self, body: dict[str, Any]) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        subject = text_line(body).split(" ", 1)[1][:100]
        # SNS subjects are printable ASCII without line breaks.
        subject = "".join(c if 32 <= ord(c) < 127 else "?" for c in subject).strip()
        try:
            self.client.publish(
                TopicArn=self.topic_arn, Message=json.dumps(body), Subject=subject or "alert"
            )
        except (BotoCoreError, ClientError) as exc:
            raise NotifyError(f"SNS {self.topic_arn}: {exc}") from None


#: The stack's Output naming its alerts topic (cloud.stack.template).
TOPIC_OUTPUT = "AlertsTopicArn"


def stack_topic_arn(endpoint: Endpoint, stack_name: str) -> str:
    """The deployed stack's alerts topic; ConfigError saying what to do if there is none."""
    from cloud.stack.deploy import stack_outputs

    try:
        outputs = stack_outputs(endpoint, stack_name)
    except StackNotFound:
        raise ConfigError(
            f"no stack {stack_name} for the alerts' SNS topic: deploy it with `cloud deploy`, "
            "or give --no-sns (or --sns-topic ARN)"
        ) from None
    arn = outputs.get(TOPIC_OUTPUT)
    if not arn:
        raise ConfigError(
            f"the stack {stack_name} has no {TOPIC_OUTPUT} (deployed before alerts were): "
            "update it with `cloud deploy`, or give --no-sns"
        )
    return arn


def remote_notifiers(
    side: Callable[[], Target],
    webhooks: tuple[str, ...],
    sns: bool | None,
    sns_topic: str | None,
    stack_name: str,
) -> list[Remote]:
    """The notifiers besides stdout: each webhook, and the SNS topic named or the stack's
    (by default on AWS). `side` resolves the target only when SNS needs it, so a watcher
    given its own broker and webhooks needs no target at all."""
    found: list[Remote] = [Webhook(url) for url in webhooks]
    if (sns or sns_topic) and side().stack is not None:
        raise ConfigError(
            "--sns/--sns-topic: the local stack has no SNS; use --webhook, or --target aws"
        )
    if sns_topic:
        found.append(Sns(side().endpoint.client("sns"), sns_topic))
    elif sns or (sns is None and side().name == "aws"):
        found.append(
            Sns(side().endpoint.client("sns"), stack_topic_arn(side().endpoint, stack_name))
        )
    return found


class FloodGate:
    """At most `per_minute` notifications in a minute of the watcher's clock; the rest are
    held back and, when the minute ends, summed up in one `held` notification. Held ones are
    not sent later: their episodes are still tracked, the dashboard and the next clear say
    where things stand."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._window_start: int | None = None
        self._sent = 0
        self._held: Counter[str] = Counter()
        #: Episodes whose fire was held: their clear is held too, whenever it comes.
        self._held_fires: set[str] = set()

    def admit(self, notes: list[Notification], now_ms: int) -> list[dict[str, Any]]:
        """The bodies to send now: a summary of the last window if it ended, then the notes
        the cap lets through. Fires count against the cap; a clear goes wherever its fire
        went (sent, or held), so a receiver never has an episode it cannot close, nor a
        clear of one it never heard of, and the clears cost at most the fires sent."""
        out = self.flush(now_ms)
        for note in notes:
            body = note.to_json()
            episode = str(body.get("episode"))
            if note.event == CLEARED:
                if episode in self._held_fires:
                    self._held_fires.discard(episode)
                    self._hold(note.rule, now_ms)
                else:
                    out.append(body)
                continue
            if self._window_start is None:
                self._window_start = now_ms
            if self._sent < self.per_minute:
                self._sent += 1
                out.append(body)
            else:
                self._held_fires.add(episode)
                self._hold(note.rule, now_ms)
        return out

    def _hold(self, rule: str, now_ms: int) -> None:
        if self._window_start is None:
            self._window_start = now_ms
        self._held[rule] += 1

    def flush(self, now_ms: int) -> list[dict[str, Any]]:
        """The summary once the window is over (nothing if none was held)."""
        if self._window_start is None or now_ms - self._window_start < WINDOW_MS:
            return []
        start, held = self._window_start, self._held
        self._window_start, self._sent, self._held = None, 0, Counter()
        if not held:
            return []
        total = sum(held.values())
        by_rule = ", ".join(f"{rule} x{n}" for rule, n in held.most_common())
        return [
            {
                "event": HELD,
                "count": total,
                "rules": dict(held),
                "from": iso_ms(start),
                "at": iso_ms(now_ms),
                "message": (
                    f"{total} more notification(s) since {iso_ms(start)} not sent (over "
                    f"{self.per_minute} a minute): {by_rule}"
                ),
            }
        ]
