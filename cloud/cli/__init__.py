"""`cloud`: the command line over the cloud package. Parsing and error reporting only.

The group is here; its commands are in a module each by what they drive (`local`,
`status`, `identity`, `ingest`, `data`, `export`, `query`, `fleet`, `aws`), with the options they
share in `options` and everything they print as rows in `output`.
"""

from __future__ import annotations

import logging
import sys

import click

from cloud.cli import (
    alerts,
    aws,
    dashboard,
    data,
    export,
    fleet,
    identity,
    ingest,
    local,
    query,
    status,
)


@click.group(epilog="Exit codes: 0 success, 1 a failure the message explains, 2 a usage error.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """The cloud side of the sensor pipeline: local stack, ingest, readings."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    # matplotlib logs "generated new fontManager" at INFO on a first run: a stray line.
    for noisy in ("botocore", "boto3", "urllib3", "paho", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # ... and "Matplotlib is building the font cache" as a WARNING when that is slow: a
    # one-time note, not a problem, that would precede a command's one error line.
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)


# click lists them by name, whatever the order here.
for command in (
    alerts.alerts,
    local.local,
    status.status,
    identity.provision,
    identity.revoke,
    aws.deploy,
    aws.destroy,
    ingest.ingest,
    data.readings,
    data.summary,
    export.export,
    query.query,
    query.plot,
    fleet.config,
    fleet.devices,
    dashboard.dashboard,
):
    main.add_command(command)
