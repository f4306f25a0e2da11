"""Files written whole or not at all: a reader never sees half a file, a failed write keeps the old one."""
from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path, data: str | bytes | Callable[[io.IOBase], None]) -> None:
    """Write `path` whole or not at all: a temporary file beside it, then `os.replace`.

    `data` is text, bytes, or a function that writes into the open (binary) temporary file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
