"""`cloud provision | revoke`: a device's key and certificate, locally or in AWS IoT."""

from __future__ import annotations

from pathlib import Path

import click

from cloud import target as targets
from cloud.cli import options
from cloud.cli.errors import reports_errors
from cloud.cli.output import Header
from cloud.identity.local_ca import certs_dir, refuse_replacing
from cloud.local.identities import device_identity
from cloud.local.stack import restart_broker


@click.command()
@click.option(
    "--id",
    "device_ids",
    required=True,
    multiple=True,
    help="The device id, e.g. sensor-3; repeat it for several devices.",
)
@click.option("--force", is_flag=True, help="Replace an existing key and certificate.")
@options.stack_name("aws: the deployed stack whose IoT policy the device gets.")
@options.target_options
@reports_errors
def provision(
    device_ids: tuple[str, ...],
    force: bool,
    stack_name: str,
    target: str | None,
    endpoint_url: str | None,
) -> None:
    """Make a device's key and certificate in certs/ID/ (key 0600, folder 0700).

    Locally the local CA signs it. On AWS the key is made here and never leaves this
    machine: AWS IoT signs a CSR, and the certificate is tied to the thing ID and the
    stack's IoT policy.
    """
    from device.errors import PayloadError
    from device.payload import check_sensor_id

    for device_id in device_ids:
        try:
            check_sensor_id(device_id)
        except PayloadError as exc:
            raise click.BadParameter(str(exc), param_hint="--id") from None
    chosen = targets.resolve(target, endpoint_url, need_stack=False)
    header = Header(f"target {chosen.name} ({chosen.why})")
    root = Path.cwd()
    if chosen.name == "local":
        refuse_replacing(root, device_ids, force)
    policy = ""
    if chosen.name == "aws":
        from cloud.stack.deploy import stack_outputs

        policy = stack_outputs(chosen.endpoint, stack_name).get("IotPolicyName", "")
        if not policy:
            raise click.ClickException(
                f"stack {stack_name} has no IotPolicyName output; run `cloud deploy`"
            )
    replaced = [i for i in device_ids if (certs_dir(root) / i / "cert.pem").exists()]
    for device_id in device_ids:
        _provision_one(chosen, root, device_id, policy, force, header)
    if chosen.name == "local" and replaced:
        click.echo(f"revoked every earlier certificate of {', '.join(replaced)}")
        if chosen.stack is not None:
            pid = restart_broker(root)
            click.echo(f"broker restarted with the new revocation list (pid {pid})")


def _provision_one(
    chosen: targets.Target, root: Path, device_id: str, policy: str, force: bool, header: Header
) -> None:
    if chosen.name == "aws":
        from cloud.identity.iot import provision_device

        result = provision_device(chosen.endpoint, root, device_id, policy, force=force)
        ident, command = result.identity, result.command
        header()
        click.echo(
            f"certificate {result.certificate_id} active, "
            f"attached to thing {device_id} and policy {policy}"
        )
    else:
        ident = device_identity(root, device_id, force=force)
        header()
        broker = chosen.stack.broker_url if chosen.stack else "mqtts://BROKER:8883"
        # The local stack's ingest confirms each reading it wrote (README, Guarantees).
        command = ident.agent_command(device_id, broker, receipts=True)
    click.echo(f"wrote {ident.cert}, {ident.key} (0600) and {ident.ca}")
    click.echo(f"run: {command}")


@click.command()
@click.option("--id", "device_id", required=True, help="The device id whose certificate to revoke.")
@click.option(
    "--keep", is_flag=True, help="aws: leave the certificate INACTIVE instead of deleting it."
)
@options.target_options
@reports_errors
def revoke(device_id: str, keep: bool, target: str | None, endpoint_url: str | None) -> None:
    """Revoke a device's certificate: on AWS deactivate, detach and delete it; locally add
    it to the local CA's revocation list and restart the broker so it takes effect."""
    chosen = targets.resolve(target, endpoint_url, need_stack=False)
    header = Header(f"target {chosen.name} ({chosen.why})")
    root = Path.cwd()
    if chosen.name == "aws":
        from cloud.identity.iot import revoke_device_aws

        result = revoke_device_aws(chosen.endpoint, root, device_id, delete=not keep)
        header()
        what = "deactivated" if keep else "deactivated and deleted"
        click.echo(f"{device_id}: {len(result.certificate_ids)} certificate(s) {what}")
        return
    from cloud.identity.revocation import revoke_device_local

    crl = revoke_device_local(root, device_id)
    header()
    click.echo(f"{device_id}: every certificate issued for it is revoked in {crl}")
    if chosen.stack is not None:
        pid = restart_broker(root)
        click.echo(f"broker restarted with the new revocation list (pid {pid})")
