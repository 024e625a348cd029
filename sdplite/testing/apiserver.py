"""A stand-in Kubernetes API server for DRA drivers: the few paths they use, answered as the real one does.

Serves, on 127.0.0.1 and a free port, with the standard library only:

- ``GET /api/v1/nodes/<name>``;
- ResourceSlices: list (with ``fieldSelector`` on ``spec.driver`` and
  ``spec.nodeName``), create (``generateName`` gets 5 random characters),
  replace (409 Conflict on a stale ``resourceVersion``, 422 on a change of an
  immutable field), delete (404 when gone, 409 when ``preconditions`` fail);
- ``GET .../namespaces/<ns>/resourceclaims/<name>``.

It needs ``Authorization: Bearer <token>`` (401 otherwise), records every
request in :attr:`FakeAPIServer.requests`, can fail chosen requests on
purpose (:meth:`FakeAPIServer.fail`) and wipe a node's slices as a
restarting kubelet does. An optional ``validate(kind, object)`` callable
checks every object written (the tests pass the ``kubernetes`` client's
models); what it raises becomes a 422.
"""

from __future__ import annotations

import json
import os
import threading
import urllib.parse
import uuid
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional

__all__ = ["FakeAPIServer", "Request"]

SLICES = "/apis/resource.k8s.io/v1/resourceslices"
CLAIMS = "/apis/resource.k8s.io/v1/namespaces/"


class Request:
    """One request as the server saw it."""

    __slots__ = ("method", "path", "query", "body", "token", "status")

    def __init__(self, method: str, path: str, query: dict[str, str], body: Any, token: str) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.body = body
        self.token = token
        self.status = 0

    def __repr__(self) -> str:
        return f"<{self.method} {self.path} {self.query or ''} -> {self.status}>"


class _Failure(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure" if code >= 400 else "Success",
        "message": message,
        "reason": reason,
        "code": code,
    }


class FakeAPIServer:
    """See the module docstring. Use as a context manager, or :meth:`start` / :meth:`stop`."""

    def __init__(
        self,
        token: str = "test-token",
        nodes: Sequence[str] = ("node-1",),
        validate: Optional[Callable[[str, dict[str, Any]], None]] = None,
    ) -> None:
        self.token = token
        self.validate = validate
        self.requests: list[Request] = []
        self.nodes = {
            n: {"apiVersion": "v1", "kind": "Node", "metadata": {"name": n, "uid": str(uuid.uuid4())}}
            for n in nodes
        }
        self.slices: dict[str, dict[str, Any]] = {}
        self.claims: dict[tuple[str, str], dict[str, Any]] = {}
        self.lock = threading.Condition()
        self._version = 100
        self._failures: list[tuple[str, str, int, int]] = []  # method, path prefix, code, times left
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    # -- running ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        port = self._server.server_address[1]
        return f"http://127.0.0.1:{port}"

    def start(self) -> FakeAPIServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner._handle(self, "GET")

            def do_POST(self) -> None:
                owner._handle(self, "POST")

            def do_PUT(self) -> None:
                owner._handle(self, "PUT")

            def do_DELETE(self) -> None:
                owner._handle(self, "DELETE")

            def log_message(self, format: str, *args: Any) -> None:
                pass  # requests are recorded instead

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        server = self._server
        self._thread = threading.Thread(
            target=lambda: server.serve_forever(poll_interval=0.05), name="fake-apiserver", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None

    def __enter__(self) -> FakeAPIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- test controls ---------------------------------------------------------------

    def fail(self, method: str, path_prefix: str, code: int, times: int = 1) -> None:
        """Answer the next ``times`` matching requests with ``code`` (409, 500, 503, ...)."""
        with self.lock:
            self._failures.append((method, path_prefix, code, times))

    def wipe_slices(self, node: str, driver: Optional[str] = None) -> int:
        """Delete a node's slices (of one driver, or all), as the kubelet does at start."""
        with self.lock:
            gone = [
                name
                for name, obj in self.slices.items()
                if obj["spec"].get("nodeName") == node and driver in (None, obj["spec"].get("driver"))
            ]
            for name in gone:
                del self.slices[name]
            self.lock.notify_all()
            return len(gone)

    def wait(self, predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
        """Block until ``predicate()`` (called under the lock) is true after some request."""
        with self.lock:
            return self.lock.wait_for(predicate, timeout)

    def add_claim(
        self,
        namespace: str,
        name: str,
        driver: str,
        results: Sequence[tuple[str, str]],
        pool: str = "node-1",
        config: Sequence[dict[str, Any]] = (),
        allocated: bool = True,
    ) -> str:
        """Store an allocated ResourceClaim: ``results`` are (request, device) pairs; returns its UID."""
        uid = str(uuid.uuid4())
        requests = sorted({r.split("/")[0] for r, _ in results})
        claim: dict[str, Any] = {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceClaim",
            "metadata": {"name": name, "namespace": namespace, "uid": uid, "resourceVersion": self._next()},
            "spec": {
                "devices": {
                    "requests": [{"name": r, "exactly": {"deviceClassName": driver}} for r in requests]
                }
            },
        }
        if allocated:
            claim["status"] = {
                "allocation": {
                    "devices": {
                        "results": [
                            {"request": r, "driver": driver, "pool": pool, "device": d} for r, d in results
                        ],
                        "config": [
                            {
                                "source": "FromClaim",
                                "requests": c.get("requests", []),
                                "opaque": {"driver": driver, "parameters": c["parameters"]},
                            }
                            for c in config
                        ],
                    }
                }
            }
        if self.validate is not None:
            self.validate("ResourceClaim", claim)
        with self.lock:
            self.claims[(namespace, name)] = claim
        return uid

    # -- serving -----------------------------------------------------------------------

    def _next(self) -> str:
        self._version += 1
        return str(self._version)

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        url = urllib.parse.urlsplit(handler.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        auth = handler.headers.get("Authorization") or ""
        body = None
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        request = Request(
            method, url.path, query, body, auth[len("Bearer ") :] if auth.startswith("Bearer ") else ""
        )
        with self.lock:
            self.requests.append(request)
            try:
                if self.token and request.token != self.token:
                    raise _Failure(401, "Unauthorized", "Unauthorized")
                self._injected(method, url.path)
                code, answer = self._route(request)
            except _Failure as failure:
                code, answer = failure.code, _status(failure.code, failure.reason, failure.message)
            request.status = code
            self.lock.notify_all()
        data = json.dumps(answer).encode()
        handler.send_response(code)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _injected(self, method: str, path: str) -> None:
        for i, (m, prefix, code, times) in enumerate(self._failures):
            if m == method and path.startswith(prefix):
                if times <= 1:
                    del self._failures[i]
                else:
                    self._failures[i] = (m, prefix, code, times - 1)
                reason = {409: "Conflict", 500: "InternalError", 503: "ServiceUnavailable"}.get(code, "")
                raise _Failure(code, reason, f"injected failure {code}")

    def _route(self, request: Request) -> tuple[int, Any]:
        path, method = request.path, request.method
        if path.startswith("/api/v1/nodes/") and method == "GET":
            node = self.nodes.get(path.rsplit("/", 1)[1])
            if node is None:
                raise _Failure(404, "NotFound", f'nodes "{path.rsplit("/", 1)[1]}" not found')
            return 200, node
        if path == SLICES and method == "GET":
            return 200, self._list(request.query.get("fieldSelector", ""))
        if path == SLICES and method == "POST":
            return 201, self._create(request.body)
        if path.startswith(SLICES + "/"):
            name = path[len(SLICES) + 1 :]
            if method == "PUT":
                return 200, self._replace(name, request.body)
            if method == "DELETE":
                return 200, self._delete(name, request.body)
        if path.startswith(CLAIMS) and method == "GET":
            parts = path[len(CLAIMS) :].split("/")
            if len(parts) == 3 and parts[1] == "resourceclaims":
                claim = self.claims.get((parts[0], parts[2]))
                if claim is None:
                    raise _Failure(404, "NotFound", f'resourceclaims.resource.k8s.io "{parts[2]}" not found')
                return 200, claim
        raise _Failure(404, "NotFound", f"the server could not find the requested resource ({method} {path})")

    def _list(self, selector: str) -> dict[str, Any]:
        wanted = {}
        for term in filter(None, selector.split(",")):
            key, _, value = term.partition("=")
            if key not in ("spec.driver", "spec.nodeName"):
                raise _Failure(400, "BadRequest", f'field label not supported: "{key}"')
            wanted[key.split(".", 1)[1]] = value
        items = [
            obj
            for _, obj in sorted(self.slices.items())
            if all(obj["spec"].get(k) == v for k, v in wanted.items())
        ]
        return {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceSliceList",
            "metadata": {"resourceVersion": str(self._version)},
            "items": json.loads(json.dumps(items)),
        }

    def _check(self, obj: Any) -> None:
        if not isinstance(obj, dict) or obj.get("kind") != "ResourceSlice":
            raise _Failure(400, "BadRequest", "the body is not a ResourceSlice")
        if self.validate is not None:
            try:
                self.validate("ResourceSlice", obj)
            except Exception as exc:
                raise _Failure(422, "Invalid", f"ResourceSlice is invalid: {exc}") from None

    def _create(self, obj: Any) -> Any:
        self._check(obj)
        meta = obj["metadata"]
        name = meta.get("name") or meta.get("generateName", "") + os.urandom(4).hex()[:5]
        if not name:
            raise _Failure(422, "Invalid", "name or generateName is required")
        if name in self.slices:
            raise _Failure(409, "AlreadyExists", f'resourceslices.resource.k8s.io "{name}" already exists')
        meta.update(name=name, uid=str(uuid.uuid4()), resourceVersion=self._next())
        self.slices[name] = obj
        return obj

    def _replace(self, name: str, obj: Any) -> Any:
        self._check(obj)
        current = self.slices.get(name)
        if current is None:
            raise _Failure(404, "NotFound", f'resourceslices.resource.k8s.io "{name}" not found')
        if obj["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            raise _Failure(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on resourceslices.resource.k8s.io "{name}": the object has '
                f"been modified; please apply your changes to the latest version and try again",
            )
        for field in ("driver", "nodeName"):
            if obj["spec"].get(field) != current["spec"].get(field):
                raise _Failure(422, "Invalid", f"spec.{field}: field is immutable")
        if obj["spec"].get("pool", {}).get("name") != current["spec"].get("pool", {}).get("name"):
            raise _Failure(422, "Invalid", "spec.pool.name: field is immutable")
        obj["metadata"].update(uid=current["metadata"]["uid"], resourceVersion=self._next())
        self.slices[name] = obj
        return obj

    def _delete(self, name: str, options: Any) -> dict[str, Any]:
        current = self.slices.get(name)
        if current is None:
            raise _Failure(404, "NotFound", f'resourceslices.resource.k8s.io "{name}" not found')
        pre = (options or {}).get("preconditions") or {}
        for key in ("uid", "resourceVersion"):
            if pre.get(key) and pre[key] != current["metadata"][key]:
                raise _Failure(409, "Conflict", f"Precondition failed: {key} in precondition: {pre[key]}")
        del self.slices[name]
        return dict(_status(200, "", ""), details={"name": name, "kind": "resourceslices"})
