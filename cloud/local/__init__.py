"""The local stack: Mosquitto and moto's server on loopback, standing in for AWS."""
