"""`device-agent`: the command line over device.agent. Parsing and error reporting; and
run_agents, the process's part rather than the agent's: it takes SIGINT/SIGTERM for every
agent it runs and prints each one's tally."""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from device import local_stack
from device.agent import Agent, Summary
from device.config import (
    FULL_POLICIES,
    MQTT_VERSIONS,
    SENSORS,
    TRANSPORTS,
    AgentConfig,
    load_config,
)
from device.errors import AgentError

if TYPE_CHECKING:
    from device.fleet import Fleet

log = logging.getLogger("device")


def setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose > 1 else logging.INFO
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    if verbose < 2:
        logging.getLogger("paho").setLevel(logging.WARNING)


def run_agents(agents: list[Agent], fleet: Fleet | None = None) -> list[Summary]:
    """Run agents, each on a thread of its own or all of them on `fleet`'s, and print each
    one's tally; SIGINT/SIGTERM stop them cleanly (they flush first).

    The main thread only waits, so the signal handler never interrupts an agent mid-write.
    """
    results: list[Summary | BaseException] = [RuntimeError("not run")] * len(agents)

    def work(i: int) -> None:
        try:
            results[i] = agents[i].run()
        except BaseException as exc:
            results[i] = exc

    def drive(fleet: Fleet) -> None:
        try:
            found = fleet.run()
        except BaseException as exc:
            results[:] = [exc] * len(agents)
            return
        for i, agent in enumerate(agents):
            results[i] = found.get(agent.config.sensor_id, RuntimeError("not run"))

    def on_signal(signum: int, frame: object) -> None:
        log.info("%s: flushing and stopping", signal.Signals(signum).name)
        for agent in agents:
            agent.stop()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    if fleet is None:
        threads = [
            threading.Thread(target=work, args=(i,), name=a.config.sensor_id)
            for i, a in enumerate(agents)
        ]
    else:
        threads = [threading.Thread(target=drive, args=(fleet,), name="fleet")]
    try:
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(0.5)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    # The tally is printed even when an agent failed: it says what was kept for later.
    for agent in agents:
        click.echo(agent.summary.line())
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        first = errors[0]
        if isinstance(first, AgentError):
            raise click.ClickException(str(first))
        raise first
    return [r for r in results if isinstance(r, Summary)]


def _threaded_agents(configs: list[AgentConfig]) -> list[Agent]:
    """An agent per config (each opens its outbox); none if one cannot be made."""
    agents: list[Agent] = []
    try:
        for config in configs:
            agents.append(Agent(config))
    except AgentError as exc:
        for agent in agents:
            agent.close()
        raise click.ClickException(str(exc)) from None
    return agents


def _tallies(
    configs: list[AgentConfig], results: dict[str, Summary | BaseException]
) -> list[Summary]:
    """run_agents' output for devices run elsewhere: each one's tally, then the first error."""
    errors: list[BaseException] = []
    summaries: list[Summary] = []
    for config in configs:
        outcome = results.get(config.sensor_id, AgentError("not run"))
        if isinstance(outcome, Summary):
            summaries.append(outcome)
            click.echo(outcome.line())
        else:
            errors.append(outcome)
            click.echo(f"{config.sensor_id}: {outcome}")
    if errors:
        raise click.ClickException(str(errors[0]))
    return summaries


def _local_stack(sensor_ids: list[str]) -> Callable[[str], dict[str, Any] | None]:
    """Broker and certificates from a local stack (`cloud local up`) run from this folder,
    looked up only when nothing else names a broker; the ids without a certificate get one
    together, on the first lookup (one `cloud provision` for a whole simulated fleet)."""
    found: dict[str, dict[str, Any]] | None = None

    def lookup(sensor_id: str) -> dict[str, Any] | None:
        nonlocal found
        if found is None:
            found = local_stack.device_defaults(sensor_ids) or {}
        return found.get(sensor_id)

    return lookup


def build_config(
    sensor_id: str,
    config_file: Path | None,
    flags: dict[str, Any],
    stack: Callable[[str], dict[str, Any] | None] | None = None,
) -> AgentConfig:
    if config_file is None and os.environ.get("DEVICE_AGENT_CONFIG"):
        config_file = Path(os.environ["DEVICE_AGENT_CONFIG"])
    lookup = stack or _local_stack([sensor_id])
    try:
        return load_config(
            sensor_id, flags, config_file=config_file, default_broker=lambda: lookup(sensor_id)
        )
    except AgentError as exc:
        raise click.ClickException(str(exc)) from None


def agent_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Options every way of running agents shares; None means "not given on the line"."""
    options = [
        click.option("--broker", help="mqtts://HOST:PORT (TLS) or mqtt://HOST:PORT (plain)."),
        click.option("--cert", type=click.Path(path_type=Path), help="Device certificate (PEM)."),
        click.option(
            "--key", type=click.Path(path_type=Path), help="Device private key (PEM, mode 0600)."
        ),
        click.option(
            "--ca", type=click.Path(path_type=Path), help="CA that signed the broker's certificate."
        ),
        click.option(
            "--transport", type=click.Choice(TRANSPORTS), help="MQTT client library [paho]."
        ),
        click.option(
            "--interval",
            type=click.FloatRange(min=0),
            help="Seconds between readings [5]; 0: as fast as the link allows.",
        ),
        click.option(
            "--count", type=click.IntRange(min=1), help="Stop once N readings are acknowledged."
        ),
        click.option("--qos", type=click.Choice(["0", "1"]), help="MQTT QoS [1]."),
        click.option(
            "--mqtt-version",
            type=click.Choice(MQTT_VERSIONS),
            help="MQTT protocol [auto: 5, or 3.1.1 if the broker speaks only that].",
        ),
        click.option(
            "--clock-wait",
            type=click.FloatRange(min=0),
            help="Seconds to hold readings until the system clock is synchronised (NTP), "
            "then stamp them anyway [120; 0 with the local stack].",
        ),
        click.option(
            "--outbox-max",
            type=click.IntRange(min=1),
            help="Readings the outbox holds at most [100000].",
        ),
        click.option(
            "--outbox-full",
            type=click.Choice(FULL_POLICIES),
            help="When the outbox is full [drop-oldest].",
        ),
        click.option(
            "--inflight",
            type=click.IntRange(1, 65_000),
            help="Publishes awaiting PUBACK at once [100].",
        ),
        click.option(
            "--flush-timeout", type=click.FloatRange(min=0), help="Seconds to flush on stop [10]."
        ),
        click.option(
            "--offline-limit",
            type=click.FloatRange(min=0),
            help="Give up (exit 1) after this many seconds unable to reach the broker [0: never].",
        ),
        click.option(
            "--receipts/--no-receipts",
            default=None,
            help="Keep each reading until `cloud ingest` confirms it is in the table, not just "
            "until the broker acknowledges it [on with the local stack, else off].",
        ),
        click.option(
            "--receipt-timeout",
            type=click.FloatRange(min=1),
            help="With --receipts: seconds to wait for one before sending again [30].",
        ),
        click.option(
            "--health-interval",
            type=click.FloatRange(min=1),
            help="Seconds between health messages on sensors/ID/health [60].",
        ),
        click.option(
            "--flow-control/--no-flow-control",
            default=None,
            help="awsiot: keep AWS IoT Core's publish limits [on].",
        ),
        click.option(
            "--config",
            "config_file",
            type=click.Path(path_type=Path),
            help="TOML file of settings (see config/device-agent.example.toml).",
        ),
        click.option("-v", "--verbose", count=True, help="More log lines (-vv: MQTT packets)."),
        click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


EPILOG = (
    "Settings come from flags, then DEVICE_AGENT_<NAME> environment variables, then the "
    "--config file, then defaults. Exit codes: 0 done, 1 a failure the message explains, "
    "2 a usage error."
)


@click.group(invoke_without_command=True, epilog=EPILOG)
@click.option("--id", "sensor_id", help="This device's id, e.g. sensor-3 (its certificate's name).")
@click.option("--sensor", type=click.Choice(SENSORS), help="What to read [simulated].")
@click.option(
    "--outbox",
    type=click.Path(path_type=Path),
    help="Outbox file [~/.local/state/device-agent/ID.outbox.sqlite].",
)
@click.option("--seed", type=int, help="simulated: random seed [from the id].")
@click.option("--pin", help="dht22: the data pin, as a board name [D4].")
@click.option(
    "--w1-id",
    help="ds18b20: which sensor on the 1-Wire bus, as `ls /sys/bus/w1/devices` names it "
    "(28-0316a279...) [the first found].",
)
@click.option("--i2c-address", type=str, help="bme280: I2C address [0x76].")
@agent_options
@click.pass_context
def main(
    ctx: click.Context,
    /,
    sensor_id: str | None,
    config_file: Path | None,
    verbose: int,
    quiet: bool,
    **flags: Any,
) -> None:
    """Read a sensor and publish each reading over MQTT, losing nothing.

    Every reading is written to an on-disk outbox before it is published and removed only
    when the broker acknowledges it (with --receipts: when `cloud ingest` confirms it is in
    the table), so readings survive a lost network, a restarted or crashed broker, `kill -9`
    and a power cut.
    """
    if ctx.invoked_subcommand is not None:
        return
    setup_logging(verbose, quiet)
    if sensor_id is None:
        raise click.UsageError("--id is required, e.g. device-agent --id sensor-3")
    if flags.get("qos") is not None:
        flags["qos"] = int(flags["qos"])
    config = build_config(sensor_id, config_file, flags)
    try:
        agent = Agent(config)
    except AgentError as exc:
        raise click.ClickException(str(exc)) from None
    log.info(
        "%s: %s sensor -> %s (%s, QoS %d%s), outbox %s",
        config.sensor_id,
        config.sensor,
        config.broker,
        config.transport,
        config.qos,
        ", kept until ingest's receipt" if config.receipts else "",
        config.outbox,
    )
    (summary,) = run_agents([agent])
    if config.count is not None and summary.buffered:
        raise click.ClickException(
            f"stopped with {summary.buffered} reading(s) not yet acknowledged; "
            f"they stay in {config.outbox} and are sent on the next run"
        )


@main.command(epilog=EPILOG)
@click.option(
    "--devices", type=click.IntRange(1, 1000), required=True, help="How many simulated devices."
)
@click.option(
    "--prefix", default="sensor-", show_default=True, help="Device ids are PREFIX1 .. PREFIXN."
)
@click.option(
    "--certs-dir",
    type=click.Path(path_type=Path),
    help="With --broker: a folder of ID/cert.pem, ID/key.pem, ID/ca.pem [certs].",
)
@click.option(
    "--outbox-dir",
    type=click.Path(path_type=Path),
    help="A folder for the devices' outboxes [the agent's default].",
)
@agent_options
def simulate(
    devices: int,
    prefix: str,
    certs_dir: Path | None,
    outbox_dir: Path | None,
    config_file: Path | None,
    verbose: int,
    quiet: bool,
    **flags: Any,
) -> None:
    """Run N simulated devices, each with its own identity, connection and outbox.

    As the tutorial's `for n in {1..10}` loop of mock sensors did, in one process (a few
    past 250 devices); a summary line per device.
    """
    setup_logging(verbose, quiet)
    if flags.get("qos") is not None:
        flags["qos"] = int(flags["qos"])
    ids = [f"{prefix}{n}" for n in range(1, devices + 1)]
    stack = _local_stack(ids)
    configs = []
    for device_id in ids:
        per_device = dict(flags, sensor="simulated")
        if flags.get("broker") and not flags.get("cert"):
            folder = (certs_dir or Path("certs")) / device_id
            per_device.update(
                cert=folder / "cert.pem", key=folder / "key.pem", ca=folder / "ca.pem"
            )
        if outbox_dir is not None:
            per_device["outbox"] = outbox_dir / f"{device_id}.outbox.sqlite"
        configs.append(build_config(device_id, config_file, per_device, stack))
    # paho devices share a few threads (device.fleet), and past DEVICES_PER_PROCESS a few
    # processes; the AWS IoT SDK runs loops of its own.
    if all(c.transport == "paho" for c in configs):
        from device import fleet as fleets
        from device import fleet_processes

        try:
            fleet_processes.raise_open_files_limit(devices)
        except AgentError as exc:
            raise click.ClickException(str(exc)) from None
        processes = min(
            os.cpu_count() or 1, math.ceil(devices / fleet_processes.DEVICES_PER_PROCESS)
        )
        if processes > 1:
            log.info("%d simulated devices in %d processes -> %s", devices, processes,
                     configs[0].broker)  # fmt: skip
            summaries = _tallies(configs, fleet_processes.run_processes(configs, processes))
        else:
            fleet = fleets.Fleet(devices)
            try:
                agents = fleet.agents_for(configs)
            except AgentError as exc:
                raise click.ClickException(str(exc)) from None
            log.info("%d simulated devices -> %s", devices, configs[0].broker)
            summaries = run_agents(agents, fleet)
    else:
        agents = _threaded_agents(configs)
        log.info("%d simulated devices -> %s", devices, configs[0].broker)
        summaries = run_agents(agents)
    total = Summary(f"{devices} devices")
    for s in summaries:
        total.published += s.published
        total.acknowledged += s.acknowledged
        total.buffered += s.buffered
        total.dropped += s.dropped
        total.read_errors += s.read_errors
    click.echo(total.line())
