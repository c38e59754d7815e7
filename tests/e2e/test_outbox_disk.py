"""The outbox's disk full, or turned read-only under the running agent.

A full disk: the outbox on a small tmpfs of its own, filled up by another file once the agent
has kept a few readings. A read-only disk: the outbox on a small ext4 image mounted with
`errors=remount-ro`, then a filesystem error triggered through sysfs, so the kernel turns it
read-only under the open outbox, as it does to a Raspberry Pi's failing SD card (a plain
`mount -o remount,ro` is refused while a file is open for writing).

What a user must see: the agent says on stderr what is wrong with the outbox and what to do,
keeps running, delivers what it had kept, and counts what it could not keep.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cloud.local.mosquitto import Mosquitto
from tests.e2e.conftest import Agents, Proc, summary_line
from tests.mqtt import Subscriber, wait_until
from tests.outbox import outbox_state

KEEP_BEFORE_FAULT = 5


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


def _unmount(path: Path) -> None:
    if _run("umount", str(path)).returncode != 0:
        _run("umount", "-l", str(path))


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs of this test's own (the outbox's WAL takes ~12 KiB a reading until
    SQLite checkpoints it at ~4 MiB, so the room freed after the fault must hold the rest
    of the run)."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    done = _run("mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mnt))
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    yield mnt
    _unmount(mnt)


@pytest.fixture
def fragile_ext4(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A 4 MiB ext4 image, loop-mounted with errors=remount-ro; yields (mount point, the
    sysfs file that triggers a filesystem error)."""
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("mkfs.ext4 is not installed (e2fsprogs)")
    image, mnt = tmp_path / "ext4.img", tmp_path / "ext4"
    mnt.mkdir()
    with image.open("wb") as fh:
        fh.truncate(4 << 20)
    made = _run("mkfs.ext4", "-q", "-F", str(image))
    assert made.returncode == 0, made.stderr
    done = _run("mount", "-o", "loop,errors=remount-ro", str(image), str(mnt))
    if done.returncode != 0:
        pytest.skip(f"cannot loop-mount an ext4 image here (needs root): {done.stderr.strip()}")
    try:
        source = _run("findmnt", "-n", "-o", "SOURCE", str(mnt)).stdout.strip()
        trigger = Path("/sys/fs/ext4") / Path(source).name / "trigger_fs_error"
        if not trigger.exists():
            pytest.skip(f"this kernel has no {trigger}")
        yield mnt, trigger
    finally:
        _unmount(mnt)


def fill(folder: Path) -> Path:
    """Take every free byte of the filesystem of `folder`; return the filler file."""
    filler = folder / "filler"
    chunk = b"\0" * 4096
    with filler.open("wb", buffering=0) as fh:
        for _ in range(100_000):  # a bound far above any small test filesystem
            try:
                fh.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
        else:
            raise AssertionError(f"{folder} never filled up")
    return filler


def not_kept(err: str) -> int:
    return sum(int(n) for n in re.findall(r"(\d+) reading\(s\) not kept", err))


def start_offline(
    start_broker: Callable[..., Mosquitto],
    subscribe: Callable[..., Subscriber],
    agents: Agents,
    device_id: str,
    outbox: Path,
    *args: str,
) -> tuple[Mosquitto, Subscriber, Proc]:
    """A broker that is down (a subscriber's session waiting in it) and an agent buffering."""
    broker = start_broker()
    sub = subscribe(broker.config.port, topics=(f"sensors/{device_id}/data",))
    broker.stop()
    agent = agents.one(
        device_id,
        broker.config.port,
        "--interval",
        "0.02",
        "--flush-timeout",
        "2",
        *args,
        outbox=outbox,
    )
    wait_until(
        lambda: outbox_state(outbox)[0] >= KEEP_BEFORE_FAULT,
        30,
        f"{KEEP_BEFORE_FAULT} readings kept",
        every=0.05,
    )
    return broker, sub, agent


def test_disk_full_is_said_clearly_and_what_was_kept_is_delivered_and_counted(
    small_tmpfs: Path,
    start_broker: Callable[..., Mosquitto],
    subscribe: Callable[..., Subscriber],
    agents: Agents,
    device_id: str,
) -> None:
    outbox = small_tmpfs / "outbox.sqlite"
    broker, sub, agent = start_offline(start_broker, subscribe, agents, device_id, outbox)
    fill(small_tmpfs)
    wait_until(lambda: not_kept(agent.err()) >= 20, 30, "readings the full disk refused")
    kept = outbox_state(outbox)[0]
    broker.start()
    sub.wait_readings(device_id, kept)
    assert agent.alive(), "a full disk is not a reason to stop"
    agent.popen.send_signal(signal.SIGINT)
    agent.wait(30)

    err = agent.err()
    problems: list[str] = []
    first = next((ln for ln in err.splitlines() if "not kept" in ln), "(none)")
    if "disk is full" not in first:
        problems.append(f"stderr does not say the disk is full; it says: {first}")
    if "free space on that disk or point --outbox elsewhere" not in first:
        problems.append("stderr does not say what to do about a full disk")
    if "move the file aside" in err:
        problems.append("stderr suggests moving the outbox aside, which throws readings away")
    delivered = sorted({r["seq"] for r in sub.readings(device_id)})
    if delivered != list(range(kept)):
        problems.append(f"kept seqs 0..{kept - 1}, delivered {delivered}")
    line = summary_line(agent.out(), device_id)
    refused = not_kept(err)
    if f"dropped {refused}," not in line:
        problems.append(f"{refused} readings were not kept, but the summary says: {line}")
    assert not problems, "\n".join(problems)


def test_agent_finishes_its_run_once_the_full_disk_has_room_again(
    small_tmpfs: Path,
    start_broker: Callable[..., Mosquitto],
    subscribe: Callable[..., Subscriber],
    agents: Agents,
    device_id: str,
) -> None:
    outbox = small_tmpfs / "outbox.sqlite"
    count = 40
    broker, sub, agent = start_offline(
        start_broker, subscribe, agents, device_id, outbox, "--count", str(count)
    )
    filler = fill(small_tmpfs)
    wait_until(lambda: not_kept(agent.err()) >= 5, 30, "readings the full disk refused")
    broker.start()
    kept = outbox_state(outbox)[0]
    sub.wait_readings(device_id, kept)  # delivered while the disk is still full
    os.unlink(filler)

    # 40 readings at 0.02 s: well within 20 s once there is room again.
    assert agent.wait(20) == 0, agent.err()[-3000:]
    line = summary_line(agent.out(), device_id)
    assert "buffered 0" in line, line
    delivered = sorted({r["seq"] for r in sub.readings(device_id)})
    assert delivered == list(range(count)), "no seq lost: a refused reading takes none"


def test_outbox_turned_read_only_is_said_clearly_and_what_was_kept_is_delivered(
    fragile_ext4: tuple[Path, Path],
    start_broker: Callable[..., Mosquitto],
    subscribe: Callable[..., Subscriber],
    agents: Agents,
    device_id: str,
) -> None:
    mnt, trigger = fragile_ext4
    outbox = mnt / "outbox.sqlite"
    broker, sub, agent = start_offline(start_broker, subscribe, agents, device_id, outbox)
    trigger.write_text("e2e test\n")  # the kernel remounts it read-only (emergency_ro)
    wait_until(lambda: not_kept(agent.err()) >= 5, 30, "readings the read-only disk refused")
    kept = outbox_state(outbox)[0]
    broker.start()
    sub.wait_readings(device_id, kept)
    assert agent.alive(), "a read-only outbox is not a reason to stop"
    agent.popen.send_signal(signal.SIGINT)
    agent.wait(30)

    err = agent.err()
    problems: list[str] = []
    first = next((ln for ln in err.splitlines() if "not kept" in ln), "(none)")
    if not re.search(r"read-only|readonly|disk I/O error", first):
        problems.append(f"stderr does not say the outbox cannot be written: {first}")
    if "move the file aside" in err:
        problems.append("stderr suggests moving the outbox aside, which throws readings away")
    delivered = sorted({r["seq"] for r in sub.readings(device_id)})
    if delivered != list(range(kept)):
        problems.append(f"kept seqs 0..{kept - 1}, delivered {delivered}")
    assert not problems, "\n".join(problems)
