"""Files written whole or not at all: a reader never sees half a file, a failed write keeps the old one."""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
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


@contextlib.contextmanager
def staged(path: Path) -> Iterator[Path]:
    """Where to write `path` (and side files named after it, as ONNX's external weights) for a writer that
    wants a file name: a temporary folder beside it. When the block ends without error each file is moved into
    place (`os.replace`), `path` last, so that a reader never sees half a file; on error nothing is moved."""
    path = Path(path)
    stage = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield stage / path.name
        for item in sorted(stage.iterdir(), key=lambda p: p.name == path.name):
            os.replace(item, path.parent / item.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
