"""The journal-file study storage: its heartbeat bookkeeping and its write lock, on a real
journal file and real processes."""
import subprocess
import sys
import threading
import time

import optuna
import pytest
from optuna.storages import RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import TrialState

from entigraph.sweeps.storage import HEARTBEAT, FlockLock, HeartbeatJournalStorage

pytestmark = [pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
              pytest.mark.filterwarnings("ignore:Heartbeat of storage")]  # asked, not optimize()


def test_a_retried_trial_is_alive_from_its_start_not_from_its_failed_trials_heartbeat(tmp_path):
    storage = HeartbeatJournalStorage(str(tmp_path / "study.journal"), 1, 2,
                                      RetryHeartbeatStaleTrialCallback(max_retry=2))
    study = optuna.create_study(study_name="s", storage=storage)
    dead = study.ask()
    storage.set_trial_system_attr(dead._trial_id, HEARTBEAT, time.time())
    time.sleep(2.5)  # past the grace period: its worker died
    fail_stale_trials(study)
    retry = study.ask()  # another worker takes the retry; its first heartbeat is not written yet
    frozen = study.trials[retry.number]
    assert frozen.system_attrs["failed_trial"] == dead.number
    assert frozen.system_attrs[HEARTBEAT] < time.time() - 2  # inherited from the dead trial
    fail_stale_trials(study)  # a third worker starting a trial just then
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.RUNNING]


def acquire_in_thread(lock: FlockLock) -> threading.Thread:
    thread = threading.Thread(target=lock.acquire, daemon=True)
    thread.start()
    return thread


def test_the_journal_lock_excludes_other_processes_and_dies_with_its_holder(tmp_path):
    path = str(tmp_path / "study.journal.flock")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom entigraph.sweeps.storage import FlockLock\n"
         "FlockLock(sys.argv[1]).acquire()\nprint('held', flush=True)\ntime.sleep(600)", path],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        waiting = acquire_in_thread(FlockLock(path))
        waiting.join(timeout=1)
        assert waiting.is_alive(), "the lock was taken while another process held it"
    finally:
        holder.kill()  # a worker killed while writing to the journal
        holder.wait()
    waiting.join(timeout=10)
    assert not waiting.is_alive(), "the lock outlived the process that held it"


def test_two_storages_on_one_journal_write_in_turn(tmp_path):
    path = str(tmp_path / "study.journal")
    first = optuna.create_study(study_name="s", storage=HeartbeatJournalStorage(path, 1, 5, None))
    second = optuna.load_study(study_name="s", storage=HeartbeatJournalStorage(path, 1, 5, None))
    for study in (first, second, first):
        study.tell(study.ask(), 1.0)
    assert [t.number for t in second.trials] == [0, 1, 2]
