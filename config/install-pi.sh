#!/usr/bin/env bash
# Install the device agent as a service on a Raspberry Pi (README, "On a Raspberry Pi"):
#
#   sudo config/install-pi.sh --id sensor-3 --broker mqtts://HOST:8883 --certs DIR [--sensor S]
#
# DIR holds the device's cert.pem, key.pem and ca.pem, as `cloud provision --id sensor-3`
# wrote them in certs/sensor-3/ on the machine that ran it. This makes the agent's own user,
# a venv in /opt/sensor-pipeline/venv with the plain install plus the Pi's sensor drivers
# (no cloud half), /etc/device-agent/ID.toml, the certificates in a 0700 folder (key 0600),
# and starts device-agent@ID. Run it again to upgrade or to change a setting: it keeps the
# outbox (/var/lib/device-agent) and replaces the rest.
#
# PREFIX (default: none) installs under another root, and SYSTEMCTL (default systemctl) is the
# command that enables the unit; the tests use both, a Pi needs neither.
set -euo pipefail

usage() {
    echo "usage: sudo $0 --id ID --broker mqtts://HOST:PORT --certs DIR [--sensor simulated|cpu|ds18b20|dht22|bme280]" >&2
    exit 2
}
fail() {
    echo "Error: $*" >&2
    exit 1
}

id="" broker="" certs="" sensor="simulated"
while [ $# -gt 0 ]; do
    case "$1" in
        --id) id="${2:-}"; shift 2 ;;
        --broker) broker="${2:-}"; shift 2 ;;
        --certs) certs="${2:-}"; shift 2 ;;
        --sensor) sensor="${2:-}"; shift 2 ;;
        -h|--help) usage ;;
        *) echo "Error: unknown argument $1" >&2; usage ;;
    esac
done
[ -n "$id" ] && [ -n "$broker" ] && [ -n "$certs" ] || usage
# The agent's own rule for ids (device/payload.py), checked before any path is made of it.
[[ "$id" =~ ^[A-Za-z0-9_:-]{1,128}$ ]] || fail "--id $id: letters, digits, '_', ':' and '-' only"
case "$sensor" in simulated|cpu|ds18b20|dht22|bme280) ;; *) fail "--sensor $sensor: one of simulated, cpu, ds18b20, dht22, bme280" ;; esac
case "$broker" in mqtts://*|mqtt://*) ;; *) fail "--broker $broker: give mqtts://HOST:PORT" ;; esac
for f in cert.pem key.pem ca.pem; do
    [ -f "$certs/$f" ] || fail "--certs $certs has no $f (copy certs/$id/ from where \`cloud provision --id $id\` ran)"
done

source_dir="$(cd "$(dirname "$0")/.." && pwd)"
root="${PREFIX:-}"
root="${root%/}"  # empty: the real root
systemctl="${SYSTEMCTL:-systemctl}"
user="${AGENT_USER:-device-agent}"
venv="$root/opt/sensor-pipeline/venv"
etc="$root/etc/device-agent"

if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    echo "installing python3-venv"
    apt-get update -q && apt-get install -y -q python3-venv
fi
if ! id -u "$user" >/dev/null 2>&1; then
    # gpio and i2c exist on Raspberry Pi OS: the sensors' device files belong to them.
    groups="$(for g in gpio i2c; do getent group "$g" >/dev/null && printf '%s,' "$g"; done)"
    useradd --system --no-create-home ${groups:+--groups "${groups%,}"} "$user"
fi

echo "installing the agent into $venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check "$source_dir[pi]"

install -d -m 0755 "$etc"
install -d -m 0700 -o "$user" "$etc/certs" "$etc/certs/$id"
install -m 0644 -o "$user" "$certs/cert.pem" "$certs/ca.pem" "$etc/certs/$id/"
install -m 0600 -o "$user" "$certs/key.pem" "$etc/certs/$id/"
cat > "$etc/$id.toml" <<TOML
# Written by config/install-pi.sh; every other setting is in config/device-agent.example.toml.
broker = "$broker"
cert = "$etc/certs/$id/cert.pem"
key = "$etc/certs/$id/key.pem"
ca = "$etc/certs/$id/ca.pem"
sensor = "$sensor"
TOML

unit_dir="$root/etc/systemd/system"
install -d -m 0755 "$unit_dir"
sed -e "s|/opt/sensor-pipeline/venv|$venv|" -e "s|/etc/device-agent|$etc|g" \
    -e "s|^User=.*|User=$user|" -e "s|^Group=.*|Group=$(id -gn "$user")|" \
    "$source_dir/config/device-agent@.service" > "$unit_dir/device-agent@.service"
"$systemctl" daemon-reload
"$systemctl" enable --now "device-agent@$id"
echo "device-agent@$id is running: journalctl -u device-agent@$id -f"
