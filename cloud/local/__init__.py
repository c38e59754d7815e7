"""The local stack: a table engine, Mosquitto and ingest on loopback, kept running by a
supervisor, with their data on disk (`stack.py`). moto's server (`moto.py`) stays for the
tests of the AWS side."""
