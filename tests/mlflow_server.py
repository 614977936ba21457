"""A real `mlflow server` on loopback for tests, and a proxy before it that refuses large bodies.

`running_server(root)` starts one with a SQLite backend and `--artifacts-destination` under
`root`, waits until it answers, yields (URL, destination) and kills it (its whole session) at
the end; if it does not answer within a minute the test is skipped with the server's log.
`behind_a_body_limit(server, limit)` puts a proxy with nginx's `client_max_body_size` before it.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

START_TIMEOUT_S = 60


@dataclass(frozen=True)
class Server:
    url: str
    dest: Path  # its --artifacts-destination
    log: Path


def listed_artifacts(run_id: str, path: str | None = None) -> set[str]:
    """Every artifact file of the run, as the store lists them."""
    from registry.store import client

    found: set[str] = set()
    for entry in client().list_artifacts(run_id, path):
        found |= listed_artifacts(run_id, entry.path) if entry.is_dir else {entry.path}
    return found


def files_under(folder: Path) -> set[str]:
    """Every file below `folder`, as a relative POSIX path (what a destination holds for a run)."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def running_server(root: Path) -> Iterator[Server]:
    port = free_port()
    server = Server(f"http://127.0.0.1:{port}", root / "dest", root / "server.log")
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'srv.db'}",
               "--artifacts-destination", str(server.dest)]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no GenAI job workers: a faster start
    with open(server.log, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers(server.url):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = server.log.read_text(errors="replace")[-1500:]
                pytest.skip(f"`mlflow server` did not answer on {server.url}/health within {START_TIMEOUT_S} s "
                            f"(exit code {process.poll()}); its log ends:\n{tail}")
            time.sleep(0.5)
        yield server
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)  # the server and its workers (its own session)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


class _BodyLimitProxy(http.server.BaseHTTPRequestHandler):
    """A reverse proxy in front of the server with a body limit (nginx's `client_max_body_size`):
    a request whose body is over `limit` bytes gets 413; any other is passed to `upstream`."""

    upstream = ""  # host:port
    limit = 1 << 20
    protocol_version = "HTTP/1.1"

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(length) if length else b""  # read it all: the client then sees the answer
        if length > self.limit:
            status, headers, answer = 413, {}, b"<html><head><title>413 Request Entity Too Large</title></head></html>"
        else:
            connection = http.client.HTTPConnection(self.upstream, timeout=60)
            forwarded = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "content-length")}
            connection.request(self.command, self.path, body=body, headers=forwarded)
            response = connection.getresponse()
            status, answer = response.status, response.read()
            headers = {k: v for k, v in response.getheaders()
                       if k.lower() not in ("connection", "content-length", "transfer-encoding")}
            connection.close()
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet
        pass


@contextlib.contextmanager
def behind_a_body_limit(server: Server, limit: int) -> Iterator[str]:
    """The URL of a proxy to `server` that refuses request bodies over `limit` bytes with 413."""
    handler = type("Handler", (_BodyLimitProxy,), {"upstream": server.url.split("//", 1)[1], "limit": limit})
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{proxy.server_address[1]}"
    finally:
        proxy.shutdown()
        proxy.server_close()
