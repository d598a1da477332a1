"""Code execution as a service: an HTTP JSON client `Executor` and a stdlib server for it.

Protocol (JSON over HTTP, UTF-8):

* ``POST /run`` with ``{"jobs": [ExecJob.to_dict(), ...]}`` answers
  ``{"results": [ExecResult.to_dict(), ...]}``; malformed requests get 400 with ``{"error": ...}``.
* ``GET /health`` answers ``{"ok": true}``.

When the server has a token, each request must carry ``Authorization: Bearer <token>``.
The server binds to 127.0.0.1 by default; expose it further only behind something that
authenticates and encrypts, since it runs whatever code it is sent.
"""

from __future__ import annotations

import hmac
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tracerl_jax.rewards.executor import ExecJob, ExecResult, Executor
from tracerl_jax.rewards.sandbox import LocalSandbox

__all__ = ["HTTPExecutor", "SandboxServer", "serve_sandbox"]

_MAX_BODY_BYTES = 64 << 20
_MAX_JOBS = 10_000


class HTTPExecutor:
    """An `Executor` that sends jobs to a sandbox service (see `serve_sandbox`)."""

    def __init__(self, url: str, *, token: str | None = None, timeout_s: float = 600.0,
                 batch_size: int = 512):
        """Configures the client.

        Args:
          url: base URL of the service, e.g. "http://127.0.0.1:8765".
          token: bearer token, when the service requires one.
          timeout_s: socket timeout of one request.
          batch_size: jobs per request; larger batches are split.

        Returns:
          None.
        """
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"url must be an http(s) URL, got {url!r}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
        if not isinstance(batch_size, int) or not 0 < batch_size <= _MAX_JOBS:
            raise ValueError(f"batch_size must be an int in [1, {_MAX_JOBS}], got {batch_size!r}")
        self.url = url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s
        self.batch_size = batch_size

    def _post(self, payload: dict) -> dict:
        data = json.dumps(payload).encode("utf-8")
        req = urllib.request.Request(self.url + "/run", data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
        if self.token is not None:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            body = e.read().decode("utf-8", "replace")[:500]
            raise RuntimeError(f"sandbox service answered HTTP {e.code}: {body}") from e

    def run(self, jobs: Sequence[ExecJob]) -> list[ExecResult]:
        """Runs the jobs on the service.

        Args:
          jobs: the jobs to run.

        Returns:
          One `ExecResult` per job, in order.
        """
        jobs = list(jobs)
        for i, job in enumerate(jobs):
            if not isinstance(job, ExecJob):
                raise ValueError(f"jobs[{i}] must be an ExecJob, got {type(job).__name__}")
        results: list[ExecResult] = []
        for lo in range(0, len(jobs), self.batch_size):
            chunk = jobs[lo:lo + self.batch_size]
            reply = self._post({"jobs": [j.to_dict() for j in chunk]})
            got = reply.get("results")
            if not isinstance(got, list) or len(got) != len(chunk):
                raise RuntimeError("sandbox service returned a malformed reply")
            results.extend(ExecResult.from_dict(r) for r in got)
        return results


class _Handler(BaseHTTPRequestHandler):
    server: SandboxServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature.
        pass  # One line per request on stderr would drown a training log.

    def _reply(self, code: int, obj: dict) -> None:
        body = json.dumps(obj).encode("utf-8")
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _authorised(self) -> bool:
        token = self.server.token
        if token is None:
            return True
        got = self.headers.get("Authorization", "")
        return hmac.compare_digest(got.encode(), f"Bearer {token}".encode())

    def do_GET(self):  # noqa: N802 - http.server's naming.
        if not self._authorised():
            return self._reply(401, {"error": "unauthorised"})
        if self.path == "/health":
            return self._reply(200, {"ok": True})
        return self._reply(404, {"error": "not found"})

    def do_POST(self):  # noqa: N802 - http.server's naming.
        if not self._authorised():
            return self._reply(401, {"error": "unauthorised"})
        if self.path != "/run":
            return self._reply(404, {"error": "not found"})
        try:
            length = int(self.headers.get("Content-Length", "-1"))
        except ValueError:
            length = -1
        if not 0 <= length <= _MAX_BODY_BYTES:
            self.close_connection = True
            return self._reply(413 if length > 0 else 411,
                               {"error": f"body must have a Content-Length up to "
                                         f"{_MAX_BODY_BYTES} bytes"})
        try:
            payload = json.loads(self.rfile.read(length).decode("utf-8"))
            raw_jobs = payload.get("jobs") if isinstance(payload, dict) else None
            if not isinstance(raw_jobs, list) or len(raw_jobs) > _MAX_JOBS:
                raise ValueError(f"'jobs' must be a list of at most {_MAX_JOBS} jobs")
            jobs = [ExecJob.from_dict(j) for j in raw_jobs]
        except (ValueError, TypeError, UnicodeDecodeError) as e:
            return self._reply(400, {"error": str(e)[:500]})
        try:
            results = self.server.executor.run(jobs)
        except Exception as e:  # An executor failure is the service's, not the client's.
            return self._reply(500, {"error": f"{type(e).__name__}: {str(e)[:500]}"})
        return self._reply(200, {"results": [r.to_dict() for r in results]})


class SandboxServer(ThreadingHTTPServer):
    """A running sandbox service; `url` is where `HTTPExecutor` should point."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], executor: Executor, token: str | None):
        super().__init__(address, _Handler)
        self.executor = executor
        self.token = token
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL of the service."""
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> SandboxServer:
        """Serves in a background daemon thread and returns self."""
        self._thread = threading.Thread(target=self.serve_forever, name="tracerl-sandbox-http",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops serving and closes the socket (the executor is left open)."""
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join()


def serve_sandbox(host: str = "127.0.0.1", port: int = 0, *, executor: Executor | None = None,
                  token: str | None = None, background: bool = True) -> SandboxServer:
    """Starts an HTTP service that runs jobs on `executor` (a fresh `LocalSandbox` by default).

    Args:
      host: address to bind; keep the loopback default unless the network is trusted.
      port: TCP port; 0 picks a free one (read it back from `server.url`).
      executor: what runs the jobs.
      token: if set, clients must send "Authorization: Bearer <token>".
      background: serve from a daemon thread and return at once; otherwise block serving.

    Returns:
      The server; call `stop()` to end it.
    """
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an int in [0, 65535], got {port!r}")
    if executor is None:
        executor = LocalSandbox()
    if not isinstance(executor, Executor):
        raise ValueError("executor must have a run(jobs) method")
    server = SandboxServer((host, port), executor, token)
    if background:
        return server.start()
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return server
