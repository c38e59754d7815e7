"""Making a new or renamed file's name durable: fsync the folder that holds it.

fsync on a file makes its bytes durable, not its directory entry; after a crash a file
created or renamed just before can be gone unless its folder was fsynced too. Both the
export's folder destination (os.replace into place) and the dead-letter file (created on
first use) need this.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
