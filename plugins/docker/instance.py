"""A stable id for this Control Center, kept in its data directory.

Containers carry it as a label, so that a supervisor recognises its own
leftovers on an engine that others use too (a remote engine, a Swarm
manager) and never touches another Control Center's containers. The id is
made once (a random UUID) and read back on every later start; a second
supervisor on the same data directory is refused by the core, so two live
supervisors never share one.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import uuid
from pathlib import Path

FILE_NAME = "instance-id"
_VALID = re.compile(r"^[0-9a-f]{32}$")
_lock = threading.Lock()
_cache: dict[Path, str] = {}


def instance_id(data_root: Path) -> str:
    """The id kept in `data_root`/instance-id, made there on first use.

    Raises OSError when the directory cannot be written (the start then
    fails with that reason rather than labelling containers with an id that
    the next run would not know).
    """
    root = Path(data_root).absolute()
    with _lock:
        found = _cache.get(root)
        if found is None:
            found = _cache[root] = _read_or_make(root / FILE_NAME)
        return found


def _read_or_make(path: Path) -> str:
    with contextlib.suppress(FileNotFoundError):
        text = path.read_text().strip()
        if _VALID.match(text):
            return text
    path.parent.mkdir(parents=True, exist_ok=True)
    new = uuid.uuid4().hex
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(new + "\n")
    try:
        # link() fails if the file appeared meanwhile: then the one there wins.
        os.link(tmp, path)
    except FileExistsError:
        text = path.read_text().strip()
        if not _VALID.match(text):
            os.replace(tmp, path)
            return new
        return text
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return new
