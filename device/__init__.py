"""The edge half: read a sensor, keep each reading on disk, publish it over MQTT."""
