"""Managing the fleet from the cloud (issue 15): each device's desired config, what it
reported back, its health and status, all as retained messages on its own topics.

`store` reads and writes those retained messages on the local stack's Mosquitto or on AWS
IoT Core; `config` sets and shows desired configs over a store; `devices` builds the fleet
view. The CLI (cloud.cli.fleet) is thin over them.
"""
