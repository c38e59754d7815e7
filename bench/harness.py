"""What every bench in this folder does around its measuring, written once.

Each bench is a script run as `.venv/bin/python bench/NAME.py`, so this folder is first on
its `sys.path` and it imports this module as `harness`. Only the standard library is used
here: `venv_imports` must work in a Python that lacks the project, to say which one to use.

- `venv_imports(__file__)`: around a bench's project imports, turns an ImportError into
  "NAME: error: ...; run it as .venv/bin/python ..." and exit 1;
- `run(main, __file__)`: SIGTERM takes Ctrl-C's path (so every ExitStack stops its broker,
  engines and children and removes its folder), BenchError is "NAME: error: ..." and exit 1,
  an interrupt is "NAME: interrupted" and exit 130;
- `temp_folder(stack, prefix)`: the run's temporary folder, removed when the stack closes;
- `default_sizes`, `require_multiples`: the sizes a bench's options leave unset, from its
  `--quick` or its full run, and the check that they fill whole batches;
- `print_goal(what, got, met)`: a "GOAL ...: MET" or "NOT MET" line;
- `print_wall_time(started)`: the last line, "bench wall time Ns".
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import FrameType


class BenchError(Exception):
    """The bench cannot produce a figure (setup failed, a run failed or timed out)."""


def bench_name(file: str) -> str:
    """What a bench calls itself in its messages: its file's name, `table_load`."""
    return Path(file).stem


@contextlib.contextmanager
def venv_imports(file: str) -> Iterator[None]:
    """Say which Python to use when the project's imports fail: a bench run by a Python
    without the project (or without `make setup`) would otherwise end in a traceback."""
    try:
        yield
    except ImportError as exc:
        sys.exit(
            f"{bench_name(file)}: error: {exc}; run it as .venv/bin/python {file} (make setup)"
        )


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up as Ctrl-C does


def run(main: Callable[[], int], file: str, interrupted: str = "interrupted") -> int:
    """main()'s exit code: 0 once measured, 1 when it raised BenchError, 130 interrupted."""
    name = bench_name(file)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return main()
    except BenchError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{name}: {interrupted}", file=sys.stderr)
        return 130


def temp_folder(stack: contextlib.ExitStack, prefix: str) -> Path:
    """A fresh folder for the run's data, removed when `stack` closes, also on failure."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    stack.callback(shutil.rmtree, root, ignore_errors=True)
    return root


def print_wall_time(started: float, load: bool = False) -> None:
    """The bench's own wall time since `started` (a perf_counter), with the load average
    when asked: on a shared machine it says how much others were running meanwhile."""
    line = f"bench wall time {time.perf_counter() - started:.0f}s"
    if load:
        line += "; load average now " + ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(line)


def default_sizes(args: argparse.Namespace, sizes: Mapping[str, object]) -> None:
    """Every option of `sizes` the command line left unset (None) takes its value there."""
    for key, value in sizes.items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def require_multiples(
    parser: argparse.ArgumentParser, args: argparse.Namespace, keys: Iterable[str], unit: int
) -> None:
    """Each of these options must be a positive multiple of `unit` (whole batches)."""
    for key in keys:
        n = getattr(args, key)
        if n <= 0 or n % unit:
            parser.error(f"--{key.replace('_', '-')} {n}: use a positive multiple of {unit}")


def print_goal(what: str, got: str | None, met: bool) -> None:
    """`GOAL what: got, MET` (or `NOT MET`); without `got`, `GOAL what: MET`."""
    verdict = "MET" if met else "NOT MET"
    print(f"GOAL {what}: {verdict}" if got is None else f"GOAL {what}: {got}, {verdict}")
