"""Locks between processes, and cached folders made once: one process makes a folder while the
others (sweep jobs, the ranks of a run) wait for it and then read what it made; a folder
appears complete or not at all."""
from __future__ import annotations

import fcntl
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


@contextmanager
def file_lock(path: Path, waiting: str) -> Iterator[None]:
    """Hold an exclusive flock on the file `path`, printing `waiting` while another process
    holds it. The kernel drops an flock if its holder dies."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(waiting, flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def making_lock(target: Path, doing: str):
    """The lock of `target` (the file `.<name>.lock` beside it), saying "<target>: another
    process is <doing>; waiting for it" while another process holds it."""
    target = Path(target)
    return file_lock(target.with_name(f".{target.name}.lock"),
                     f"{target}: another process is {doing}; waiting for it")


def make_folder_once(folder: Path, doing: str, fill: Callable[[Path], None]) -> bool:
    """Make `folder` unless it exists: `fill(tmp)` writes it into an empty folder beside it,
    renamed into place when done and removed if fill fails. True when this call made it."""
    folder = Path(folder)
    if folder.exists():
        return False
    with making_lock(folder, doing):
        if folder.exists():  # made by the process this one waited for
            return False
        for stale in folder.parent.glob(f".{folder.name}.*.tmp"):  # left by a killed process
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
        try:
            fill(tmp)
            tmp.rename(folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return True
