"""Bearer tokens against a real server: 401 without one, 403 for a read token on a mutating
call, a revoked token refused, only hashes in the store, no token in any log, every mutating
call in the audit log, and the predict rate limit's token bucket."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mlcloud.server.auth import Identity, RateLimiter, TokenBucket
from tests.server.serverproc import RunningServer, cli, start_server, token

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server-auth")


@pytest.fixture(scope="module")
def tokens(home: Path) -> dict[str, str]:
    return {"admin": token(home, "alice", "admin"), "read": token(home, "dash", "read")}


@pytest.fixture(scope="module")
def server(home: Path, tokens: dict[str, str]) -> Iterator[RunningServer]:
    srv = start_server(home)
    yield srv
    srv.stop()


SPEC = {"name": "t", "source": ".", "command": ["python", "-c", "print(1)"]}


def test_no_token_is_401_problem(server: RunningServer) -> None:
    with server.client() as http:
        answer = http.get("/v1/jobs")
    assert answer.status_code == 401
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.headers["www-authenticate"].startswith("Bearer")
    body = answer.json()
    assert body["kind"] == "AuthError" and body["status"] == 401
    assert "MLCLOUD_TOKEN" in body["hint"]


def test_unknown_token_is_401(server: RunningServer, tokens: dict[str, str]) -> None:
    forged = tokens["admin"][:-4] + "AAAA"
    with server.client(forged) as http:
        answer = http.get("/v1/jobs")
    assert answer.status_code == 401
    assert "unknown or revoked" in answer.json()["detail"]


def test_read_token_reads_but_cannot_mutate(server: RunningServer, tokens: dict[str, str]) -> None:
    with server.client(tokens["read"]) as http:
        assert http.get("/v1/jobs").status_code == 200
        assert http.post("/v1/jobs", params={"dry_run": True}, json=SPEC).status_code == 200
        for method, path in (("POST", "/v1/jobs"), ("POST", "/v1/jobs/some-job:cancel"),
                             ("DELETE", "/v1/endpoints/iris")):  # fmt: skip
            answer = http.request(method, path, json=SPEC)
            assert answer.status_code == 403, (method, path, answer.text)
            body = answer.json()
            assert body["kind"] == "PermissionDenied"
            assert "dash" in body["detail"] and "admin" in body["detail"]


def test_admin_token_mutates(server: RunningServer, tokens: dict[str, str]) -> None:
    with server.client(tokens["admin"]) as http:
        answer = http.post("/v1/jobs/no-such-job:cancel")
    assert answer.status_code == 404  # allowed through auth; the job itself is unknown
    assert answer.json()["kind"] == "NotFoundLocally"


def test_revoked_token_is_refused(server: RunningServer, home: Path) -> None:
    temp = token(home, "temp", "read")
    with server.client(temp) as http:
        assert http.get("/v1/jobs").status_code == 200
        done = cli(home, "tokens", "revoke", "temp")
        assert done.returncode == 0, done.stderr
        deadline = time.monotonic() + 10  # the server re-reads tokens every second
        while (status := http.get("/v1/jobs").status_code) == 200:
            assert time.monotonic() < deadline, "the revoked token still works"
            time.sleep(0.2)
    assert status == 401
    listed = json.loads(cli(home, "tokens", "list", "-o", "json").stdout)
    assert {t["name"]: t["revoked_at"] is not None for t in listed}["temp"] is True


def test_store_holds_only_hashes(server: RunningServer, home: Path, tokens: dict[str, str]) -> None:
    db = sqlite3.connect(home / "state.db")
    rows = db.execute("SELECT name, role, token_sha256 FROM api_tokens").fetchall()
    db.close()
    by_name = {name: (role, digest) for name, role, digest in rows}
    assert by_name["alice"] == ("admin", hashlib.sha256(tokens["admin"].encode()).hexdigest())
    for path in home.glob("state.db*"):  # the database, its WAL and shared memory
        raw = path.read_bytes()
        for value in tokens.values():
            assert value.encode() not in raw, path
            assert value.split("_", 1)[1].encode() not in raw, path


def test_tokens_never_logged(server: RunningServer, tokens: dict[str, str]) -> None:
    with server.client(tokens["admin"]) as http:
        http.get("/v1/jobs")
        http.post("/v1/jobs", params={"dry_run": True}, json=SPEC)
    with server.client(tokens["read"]) as http:
        http.post("/v1/jobs", json=SPEC)
    text = server.log_text()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert any(line.get("actor") == "alice" for line in lines)  # who, yes; the token, never
    for value in tokens.values():
        assert value not in text
        assert value.split("_", 1)[1] not in text


def test_mutating_calls_are_audited(
    server: RunningServer, home: Path, tokens: dict[str, str]
) -> None:
    with server.client(tokens["read"]) as http:
        assert http.post("/v1/jobs/j-1:cancel").status_code == 403
    with server.client(tokens["admin"]) as http:
        assert http.post("/v1/jobs/j-2:cancel").status_code == 404
        assert http.get("/v1/jobs").status_code == 200  # a read: not audited
    with server.client() as http:
        assert http.delete("/v1/endpoints/e-3").status_code == 401
    entries = json.loads(cli(home, "tokens", "audit", "-n", "3", "-o", "json").stdout)
    newest = [(e["actor"], e["action"], e["target"], e["status"], e["outcome"]) for e in entries]
    assert newest == [
        ("anonymous", "DELETE /v1/endpoints/e-3", "e-3", 401, "refused"),
        ("alice", "POST /v1/jobs/j-2:cancel", "j-2", 404, "refused"),
        ("dash", "POST /v1/jobs/j-1:cancel", "j-1", 403, "refused"),
    ]
    assert all(time.time() - e["at"] < 60 for e in entries)
    assert entries[1]["detail"] == {"kind": "NotFoundLocally"}
    with server.client(tokens["admin"]) as http:  # the same entries over the API, for admins
        assert http.get("/v1/audit", params={"limit": 3}).json() == entries
    with server.client(tokens["read"]) as http:
        assert http.get("/v1/audit").status_code == 403


def test_predict_rate_limit_is_a_token_bucket() -> None:
    bucket = TokenBucket(rate=10.0, burst=3)
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = bucket.take()
    assert 0 < wait <= 0.1  # one call's refill at 10/s
    time.sleep(wait + 0.01)
    assert bucket.take() == 0.0
    limiter = RateLimiter(rate=1.0, burst=1)
    limiter.check("predict", Identity("a", "read"))
    limiter.check("predict", Identity("b", "read"))  # per token: b has its own bucket
    with pytest.raises(Exception, match="exceeded") as refused:
        limiter.check("predict", Identity("a", "read"))
    assert refused.value.status == 429 and refused.value.headers["Retry-After"] == "1"  # type: ignore[attr-defined]


def test_cli_reports_401_as_one_line(server: RunningServer, home: Path) -> None:
    done = cli(home, "jobs", "list", MLCLOUD_SERVER=server.url)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "error: this server needs a bearer token",
        "hint: set MLCLOUD_TOKEN (or MLCLOUD_TOKEN_FILE); an admin creates one with "
        "`mlcloud tokens create NAME --role read`",
    ]
    assert httpx.get(server.url + "/healthz").status_code == 200  # health needs no token
