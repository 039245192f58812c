"""Which run a config is, and who may train it.

A run folder holds one run: a completed run of the same config there is skipped, a completed run
of another config is refused (never overwritten), and a lock on the folder lets one process at a
time train it. The lock is an `flock`, which the kernel drops when its holder dies, so a crashed
run is simply taken over by the next process that starts it.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import yaml
from omegaconf import DictConfig, OmegaConf

from entigraph.cache_folders import file_lock
from entigraph.corpus_folder import corpus_digest
from entigraph.errors import ConfigError
from entigraph.records import CONFIG, is_main_process, read_record

LOCK = ".lock"
# Keys that name, place, launch or log a run but do not change what it computes.
NOT_THE_RUN = ("command", "sweep", "tracker", "run_dir", "run_name", "preset", "paths", "run", "demo",
               "trainer.launch", "trainer.log_every", "trainer.checkpoint_every",
               "trainer.checkpoint_minutes", "trainer.dry_run", "trainer.estimate",
               # Repeating changes nothing a run without it could train: a budget within the
               # corpus reads the same blocks either way, one beyond it is refused without.
               "data.repeat",
               # How the corpus was made: a run trains on data.corpus_dir, identified by its
               # texts (config_hash), whatever settings made them.
               "synthesis", "generator")
HASH_CHARS = 8


def run_key(config: dict) -> dict:
    """The part of a resolved config that identifies a run's result."""
    key = copy.deepcopy(config)
    for dotted in NOT_THE_RUN:
        *parents, leaf = dotted.split(".")
        node = key
        for parent in parents:
            node = node.get(parent) or {}
        node.pop(leaf, None)
    return key


def config_hash(config: dict) -> str:
    """A short hash of a resolved config's run key and of the corpus it trains on (its texts'
    sha256, once its manifest exists): in the run folder's name, so runs that differ in
    anything that changes a result, a regenerated corpus included, never share a folder."""
    corpus = corpus_digest(config["data"]["corpus_dir"]) if "data" in config else None
    text = json.dumps([run_key(config), corpus], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_CHARS]


def run_hash(*, _root_: DictConfig) -> str:
    """The `${run_hash:}` resolver: config_hash of the config being composed (its name and
    folder, which hold the hash, and Hydra's own node left out)."""
    config = OmegaConf.to_container(_root_, resolve=False)
    config.pop("hydra", None)
    config.update(run_name="", run_dir="")
    return config_hash(OmegaConf.to_container(OmegaConf.create(config), resolve=True))


def _first_difference(a: Any, b: Any, prefix: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(a.keys() | b.keys()):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
    return prefix.rstrip(".")


def completed_record(cfg: DictConfig) -> Optional[dict]:
    """The record of a completed run of this very config in cfg.run_dir, else None. A completed
    run of another config there is refused: silently reusing or overwriting it would be wrong."""
    record = read_record(cfg.run_dir)
    if not record or record["status"] != "completed":
        return None
    saved = yaml.safe_load((Path(cfg.run_dir) / CONFIG).read_text())
    wanted = run_key(OmegaConf.to_container(cfg, resolve=True))
    if run_key(saved) != wanted:
        key = _first_difference(run_key(saved), wanted)
        raise ConfigError(f"{cfg.run_dir} holds a completed run of another config (it differs at "
                          f"{key}); remove that folder or set run_name to a new name")
    derived = record.get("derived", {})
    # corpus_manifest_sha256: a record written before the manifest recorded its texts' sha256.
    trained_on = derived.get("corpus_sha256") or derived.get("corpus_manifest_sha256")
    if trained_on and trained_on != corpus_digest(cfg.data.corpus_dir):
        raise ConfigError(f"{cfg.run_dir} holds a completed run on an earlier version of the "
                          f"corpus at {cfg.data.corpus_dir} (regenerated since); remove that "
                          f"folder or set run_name to a new name")
    return record


# Set in the processes of a launched run (entigraph/launch.py) to their run folder: the command
# that launched them holds its lock.
LOCK_HELD = "ENTIGRAPH_RUN_LOCK_HELD"


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run folder's lock (main process only: the other processes of a multi-process
    launch train the same run with it); wait, saying so, while another process holds it. The
    processes of a launched run take none: their launching command holds it for them."""
    if not is_main_process() or os.environ.get(LOCK_HELD) == str(Path(run_dir).resolve()):
        yield
        return
    with file_lock(Path(run_dir) / LOCK,
                   f"{run_dir}: another process is training this run; waiting for it"):
        yield
