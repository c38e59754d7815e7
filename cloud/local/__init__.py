"""The local stack: a table engine, Mosquitto and ingest on loopback (`parts.py`), kept
running by a supervisor that `stack.py` starts and stops, with their data on disk
(`state.py`). moto's server (`moto.py`) stays for the tests of the AWS side."""
