"""Where an Optuna study lives: an RDB URL (SQLite on one machine, PostgreSQL across machines) or a
journal file (several workers on one machine, no server). Either way a worker records a
heartbeat while it runs a trial, and a trial whose worker stopped beating is failed and retried
(`RetryHeartbeatStaleTrialCallback`), so a dead worker leaves no trial stuck running."""
from __future__ import annotations

import fcntl
import os
import re
import time
import warnings
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, ProgrammingError
from optuna.storages import (BaseStorage, JournalStorage, RDBStorage,
                             RetryHeartbeatStaleTrialCallback)
from optuna.exceptions import ExperimentalWarning
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend
from optuna.storages.journal._file import BaseJournalFileLock  # the lock interface, not exported
from optuna.trial import TrialState

from entigraph.errors import ConfigError

HEARTBEAT = "entigraph:heartbeat"


def is_url(storage: str) -> bool:
    return re.match(r"^[a-z][a-z0-9+]*://", storage) is not None


def shown(storage: str) -> str:
    """The storage as it may be printed or written to a file: any password masked."""
    if not is_url(storage):
        return storage
    return make_url(storage).render_as_string(hide_password=True)


class FlockLock(BaseJournalFileLock):
    """The journal's write lock: flock on a file beside it, which the kernel releases when its
    holder dies. Optuna's default symlink lock outlives a killed worker: every other worker then
    waits 30 s before forcing it, and two waiting workers can both take it. Threads of one
    worker are serialised by the journal storage itself."""

    def __init__(self, path: str) -> None:
        self._path, self._fd = path, None

    def acquire(self) -> bool:
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:  # interrupted while waiting: no descriptor left open
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        os.close(fd)  # closing the only descriptor of this open file drops its lock


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """Optuna's journal storage has no heartbeat; this one records it as a trial system attribute,
    which Optuna's stale-trial check (run before every trial) then reads as it does an RDB's."""

    def __init__(self, path: str, interval_s: int, grace_s: int, callback) -> None:
        super().__init__(JournalFileBackend(path, lock_obj=FlockLock(f"{path}.flock")))
        self._interval_s, self._grace_s, self._callback = interval_s, grace_s, callback

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, HEARTBEAT, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        running = self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        # A retried trial inherits its failed trial's system attributes, old heartbeat included:
        # until its own first heartbeat, it is alive as of its start.
        return [t._trial_id for t in running
                if now - max(t.system_attrs.get(HEARTBEAT, 0), t.datetime_start.timestamp())
                > self._grace_s]

    def get_heartbeat_interval(self) -> int:
        return self._interval_s

    def get_heartbeat_stale_trial_callback(self):
        return self._callback


def _engine_kwargs(url: str) -> dict:
    """Fail fast on an unreachable server; let SQLite writers wait for each other."""
    if url.startswith("postgresql"):
        return {"connect_args": {"connect_timeout": 10}}
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}
    return {}


def open_storage(storage: str, spec) -> BaseStorage:
    """The study storage named by sweep.optuna.storage, reached now so a bad one fails before
    any trial starts."""
    with warnings.catch_warnings():  # heartbeats are experimental in Optuna 5, and meant for this
        warnings.simplefilter("ignore", ExperimentalWarning)
        return _open(storage, spec)


def _open(storage: str, spec) -> BaseStorage:
    grace_s = spec.grace_s or 2 * spec.heartbeat_s
    retry = RetryHeartbeatStaleTrialCallback(max_retry=spec.max_retry,
                                             inherit_intermediate_values=True)
    if not is_url(storage):
        Path(storage).parent.mkdir(parents=True, exist_ok=True)
        return HeartbeatJournalStorage(storage, spec.heartbeat_s, grace_s, retry)
    for attempt in range(5):
        try:
            return RDBStorage(storage, engine_kwargs=_engine_kwargs(storage),
                              heartbeat_interval=spec.heartbeat_s, grace_period=grace_s,
                              heartbeat_stale_trial_callback=retry)
        except (IntegrityError, ProgrammingError) as err:  # workers creating the tables at once
            if attempt == 4:
                _unreachable(storage, err)
            time.sleep(1 + attempt)
        except Exception as err:  # no driver, refused, unknown host, bad credentials, ...
            _unreachable(storage, err)


def _unreachable(storage: str, err: Exception) -> None:
    """One line naming the storage (password masked) and why it failed."""
    reason = " ".join(str(err).split())[:300]
    if password := make_url(storage).password:
        reason = reason.replace(str(password), "***")
    raise ConfigError(f"config: sweep.optuna.storage={shown(storage)} cannot be reached "
                      f"({reason}); start the database or fix the URL") from None
