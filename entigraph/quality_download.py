"""Fetch the official QuALITY v1.0.1 HTML-stripped train and dev files into the cache.

The files live in github.com/nyu-mll/quality under data/v1.0.1, both one by one and inside
QuALITY.v1.0.1.zip (the README's download link). We fetch the single files and fall back to
the zip when a file is not found there. Standard library only, with a short timeout, so
that a machine without network fails in seconds with a message saying what to do instead.
"""
from __future__ import annotations

import http.client
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import IO, Optional

from entigraph.errors import CorpusError

# Read at call time (not bound as defaults), so a test or a mirror can repoint them.
BASE_URL = "https://raw.githubusercontent.com/nyu-mll/quality/main/data/v1.0.1"
FILES = ("QuALITY.v1.0.1.htmlstripped.train", "QuALITY.v1.0.1.htmlstripped.dev")
ZIP_NAME = "QuALITY.v1.0.1.zip"
TIMEOUT_S = 10.0  # per socket operation: connecting, then each read
CACHE_SUBDIR = "quality"
_CHUNK = 1 << 20


class _NotFound(Exception):
    """HTTP 404: the file is not published on its own at this address."""


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _reason(e: BaseException) -> str:
    """An exception as a short reason; some (a bare timeout) have an empty message."""
    return str(e) or type(e).__name__


# Failures while a body streams in: timeouts and resets (OSError), truncated bodies.
_READ_ERRORS = (OSError, http.client.HTTPException)


def _fail(url: str, reason: object) -> CorpusError:
    manual = ",".join(f"<dir>/{name}" for name in FILES)
    return CorpusError(f"cannot download QuALITY from {url}: {_one_line(reason)}; "
                       f"download the files elsewhere and set corpus.path={manual}")


def _open(url: str, timeout: float):
    """The response to GET `url`; _NotFound on 404, CorpusError on any other failure."""
    request = urllib.request.Request(url, headers={"User-Agent": "entigraph"})
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 404:
            raise _NotFound(url) from None
        raise _fail(url, f"HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise _fail(url, e.reason) from None
    except (OSError, ValueError, http.client.HTTPException) as e:  # timeouts, bad URLs
        raise _fail(url, _reason(e)) from None


def _write_atomic(target: Path, fill) -> None:
    """Write `target` through a temp file in its own folder: a crash never leaves a partial
    file that the cached-skip would later take as complete."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            fill(out)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check_jsonl(head: bytes, source: str) -> None:
    """A JSON-lines file starts with "{"; anything else is an error page or an LFS pointer."""
    if not head.lstrip().startswith(b"{"):
        raise _fail(source, "the response is not a QuALITY JSON-lines file")


def _copy_checked(src: IO[bytes], out: IO[bytes], url: str) -> None:
    try:
        head = src.read(_CHUNK)
        _check_jsonl(head, url)
        out.write(head)
        shutil.copyfileobj(src, out, _CHUNK)
    except _READ_ERRORS as e:
        raise _fail(url, _reason(e)) from None


def _fetch_file(url: str, target: Path, timeout: float) -> None:
    with _open(url, timeout) as response:
        _write_atomic(target, lambda out: _copy_checked(response, out, url))


def _fetch_from_zip(url: str, targets: list[Path], timeout: float) -> None:
    """Download the release zip next to the targets and extract the members they name."""
    folder = targets[0].parent
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{ZIP_NAME}.", suffix=".part")
    os.close(fd)
    try:
        try:
            with _open(url, timeout) as response, open(tmp, "wb") as out:
                shutil.copyfileobj(response, out, _CHUNK)
        except _NotFound:
            raise _fail(url, "HTTP 404 Not Found") from None
        except _READ_ERRORS as e:
            raise _fail(url, _reason(e)) from None
        try:
            with zipfile.ZipFile(tmp) as archive:
                # Members sit in a folder inside the zip; match them by file name.
                members = {Path(m).name: m for m in archive.namelist()}
                for target in targets:
                    if target.name not in members:
                        raise _fail(url, f"{target.name} is not in the archive")
                    with archive.open(members[target.name]) as src:
                        _write_atomic(target, lambda out: _copy_checked(src, out, url))
        except (zipfile.BadZipFile, zlib.error) as e:
            raise _fail(url, f"not a readable zip archive ({e})") from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def download_quality(cache_dir: str | Path, base_url: Optional[str] = None,
                     timeout: Optional[float] = None) -> list[Path]:
    """Paths of the QuALITY train and dev files in <cache_dir>/quality/, fetching the missing
    ones from `base_url` (default BASE_URL, the folder holding the files and the zip).
    Files already cached are not fetched again. CorpusError (one line) when it fails."""
    base = (base_url or BASE_URL).rstrip("/")
    timeout = TIMEOUT_S if timeout is None else timeout
    folder = Path(cache_dir).expanduser() / CACHE_SUBDIR
    targets = [folder / name for name in FILES]
    missing = [t for t in targets if not t.is_file()]
    if not missing:
        return targets
    folder.mkdir(parents=True, exist_ok=True)
    try:
        for target in list(missing):
            _fetch_file(f"{base}/{target.name}", target, timeout)
            missing.remove(target)
    except _NotFound:
        _fetch_from_zip(f"{base}/{ZIP_NAME}", missing, timeout)
    return targets
