"""model.pretrained as a hub id, with the hub online and the model not in the cache: checked
against a stand-in Hugging Face Hub on 127.0.0.1 (HF_ENDPOINT) before any run folder exists."""
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cli import entigraph

# What the Hub answers, by path: (status, X-Error-Code, JSON body). A gated model's info is
# public; its auth-check says whether the caller may read it (401 without a token, 403 with
# one not granted access).
ANSWERS = {
    "/api/models/org/missing": (404, "RepoNotFound", {"error": "Repository not found"}),
    "/api/models/org/gated": (200, None, {"id": "org/gated", "gated": "manual"}),
    "/api/models/org/gated/auth-check": (401, "GatedRepo", {"error": "Access is restricted"}),
    "/api/models/org/gated2": (200, None, {"id": "org/gated2", "gated": "auto"}),
    "/api/models/org/gated2/auth-check": (403, "GatedRepo", {"error": "Access is restricted"}),
    "/api/models/org/open": (200, None, {"id": "org/open", "gated": False}),
}


class Hub(BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's name
        self.seen.append(self.path)
        status, code, body = ANSWERS.get(self.path.split("?")[0], (404, None, {}))
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if code:
            self.send_header("X-Error-Code", code)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def hub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Hub.seen = []
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(tmp_path, monkeypatch, endpoint: str, model: str):
    """`entigraph train` of hub model `model` with an empty cache, no token, the hub online."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    return entigraph("train", f"model.pretrained={model}", "trainer.dry_run=false",
                     f"paths.root={tmp_path}/out", cwd=tmp_path, timeout=120)


def error_line(out) -> str:
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


def test_a_hub_id_is_checked_against_the_hub_before_the_run(hub, tmp_path, monkeypatch):
    missing = error_line(train(tmp_path, monkeypatch, hub, "org/missing"))
    assert "model.pretrained=org/missing is not a model on the Hugging Face Hub" in missing
    assert "correct the id" in missing and "hf auth login" in missing
    for gated in ("org/gated", "org/gated2"):  # 401 without a token, 403 without access
        line = error_line(train(tmp_path, monkeypatch, hub, gated))
        assert f"model.pretrained={gated} is gated and this user has no access" in line
        assert f"request access at {hub}/{gated}" in line and "hf auth login" in line
    assert not (tmp_path / "out").exists()  # refused before any run folder
    # A model the user may read passes: the next check (the corpus) is what stops this run.
    readable = error_line(train(tmp_path, monkeypatch, hub, "org/open"))
    assert "model.pretrained" not in readable and "no complete synthetic corpus" in readable
    asked = [path for path in Hub.seen if path.startswith("/api/models/")]  # not its telemetry
    assert asked == ["/api/models/org/missing", "/api/models/org/gated",
                     "/api/models/org/gated/auth-check", "/api/models/org/gated2",
                     "/api/models/org/gated2/auth-check", "/api/models/org/open"]


def test_an_unreachable_hub_is_one_line(tmp_path, monkeypatch):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    line = error_line(train(tmp_path, monkeypatch, endpoint, "org/open"))
    assert f"model.pretrained=org/open is not in the Hugging Face cache and the Hub ({endpoint}) " \
           f"cannot be reached" in line
    assert not (tmp_path / "out").exists()
