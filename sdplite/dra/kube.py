"""A minimal Kubernetes REST client on the standard library, for a DRA driver.

A DRA driver talks to the API server for two things only: publishing its
node's ResourceSlices and reading a ResourceClaim at prepare time. Both are a
handful of JSON requests, so sdplite does them with ``http.client`` and
``ssl`` instead of depending on the ``kubernetes`` package (docs/design.md,
"Dynamic Resource Allocation", has the paths and rules).

Inside a pod, :meth:`KubeClient.in_cluster` reads the service host and port
from the environment and the token, CA bundle and namespace from the mounted
service account. The token is a short-lived bound token that the kubelet
rewrites on rotation, so it is re-read at most every minute and at once after
a 401, as client-go does. Outside a pod (and in tests) give the URL and token.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import ssl
import threading
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any, Optional

from ..logtext import cut

__all__ = ["KubeClient", "KubeError", "SERVICE_ACCOUNT_DIR", "TOKEN_REREAD"]

log = logging.getLogger("sdplite.dra")

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
#: Re-read the token file at most this often (client-go's period), and after a 401.
TOKEN_REREAD = 60.0
#: Status codes worth retrying later: conflicts, throttling, server trouble.
TRANSIENT = frozenset({409, 429, 500, 502, 503, 504})


class KubeError(Exception):
    """A request the API server refused (``status`` > 0) or that never got an answer (0)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}" if status else message)
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def transient(self) -> bool:
        """True if trying again later may succeed (no answer, conflict, 429, 5xx)."""
        return self.status == 0 or self.status in TRANSIENT


class KubeClient:
    """JSON over HTTP(S) to one API server; thread-safe (a connection per request).

    ``token`` is a fixed bearer token; ``token_file`` is re-read as it
    rotates. ``ca_file`` is the CA bundle that signed the server's
    certificate (required for https unless ``insecure=True``).
    """

    def __init__(
        self,
        server: str,
        *,
        token: Optional[str] = None,
        token_file: Optional[str] = None,
        ca_file: Optional[str] = None,
        insecure: bool = False,
        timeout: float = 10.0,
    ) -> None:
        url = urllib.parse.urlsplit(server)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"API server URL {server!r} must look like https://host:port")
        self.server = server.rstrip("/")
        self._url = url
        self.timeout = timeout
        self._token = token
        self._token_file = token_file
        self._token_read_at = float("-inf")
        self._lock = threading.Lock()
        self._ssl: Optional[ssl.SSLContext] = None
        if url.scheme == "https":
            self._ssl = ssl.create_default_context(cafile=None if insecure else ca_file)
            if insecure:
                self._ssl.check_hostname = False
                self._ssl.verify_mode = ssl.CERT_NONE

    def __repr__(self) -> str:
        return f"KubeClient({self.server!r})"

    @classmethod
    def in_cluster(cls, directory: str = SERVICE_ACCOUNT_DIR, **kwargs: Any) -> KubeClient:
        """The API server as seen from a pod: service env vars, mounted service account."""
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT")
        if not host or not port:
            raise KubeError(
                0,
                "",
                "KUBERNETES_SERVICE_HOST/PORT are not set: not in a pod; give KubeClient(url, token=...)",
            )
        if ":" in host:
            host = f"[{host}]"  # IPv6
        token_file = os.path.join(directory, "token")
        if not os.path.exists(token_file):
            raise KubeError(
                0, "", f"no service-account token at {token_file}: is automountServiceAccountToken off?"
            )
        return cls(
            f"https://{host}:{port}",
            token_file=token_file,
            ca_file=os.path.join(directory, "ca.crt"),
            **kwargs,
        )

    @classmethod
    def from_environment(cls) -> Optional[KubeClient]:
        """``$SDPLITE_KUBE_URL`` (+ ``$SDPLITE_KUBE_TOKEN``) if set, else in-cluster, else None."""
        url = os.environ.get("SDPLITE_KUBE_URL")
        if url:
            return cls(url, token=os.environ.get("SDPLITE_KUBE_TOKEN") or None)
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            return cls.in_cluster()
        return None

    # -- requests ------------------------------------------------------------------

    def _current_token(self, force: bool = False) -> Optional[str]:
        if self._token_file is None:
            return self._token
        with self._lock:
            now = time.monotonic()
            if force or now - self._token_read_at >= TOKEN_REREAD:
                try:
                    with open(self._token_file, encoding="utf-8") as handle:
                        self._token = handle.read().strip()
                except OSError as exc:
                    log.warning("cannot read the service-account token %s: %s", self._token_file, exc)
                self._token_read_at = now
            return self._token

    def request(
        self,
        method: str,
        path: str,
        body: Optional[Mapping[str, Any]] = None,
        query: Optional[Mapping[str, str]] = None,
    ) -> Any:
        """Send one request; return the decoded JSON answer or raise :class:`KubeError`."""
        target = path + ("?" + urllib.parse.urlencode(query) if query else "")
        data = None if body is None else json.dumps(body).encode()
        status, answer = self._send(method, target, data, self._current_token())
        if status == 401 and self._token_file is not None:
            # The token may have rotated since we last read it.
            status, answer = self._send(method, target, data, self._current_token(force=True))
        if 200 <= status < 300:
            return answer
        reason = answer.get("reason", "") if isinstance(answer, dict) else ""
        message = answer.get("message", "") if isinstance(answer, dict) else cut(answer)
        raise KubeError(status, reason, f"{method} {path}: {message}")

    def _send(self, method: str, target: str, data: Optional[bytes], token: Optional[str]) -> tuple[int, Any]:
        url = self._url
        connection: http.client.HTTPConnection
        if self._ssl is not None:
            connection = http.client.HTTPSConnection(
                url.hostname or "", url.port or 443, timeout=self.timeout, context=self._ssl
            )
        else:
            connection = http.client.HTTPConnection(url.hostname or "", url.port or 80, timeout=self.timeout)
        headers = {"Accept": "application/json", "User-Agent": "sdplite-dra"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            connection.request(method, url.path.rstrip("/") + target, body=data, headers=headers)
            response = connection.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise KubeError(0, "", f"{method} {target}: no answer from {self.server}: {exc}") from None
        finally:
            connection.close()
        try:
            answer = json.loads(raw) if raw else {}
        except ValueError:
            answer = raw.decode("utf-8", "replace")
        return response.status, answer

    def get(self, path: str, **query: str) -> Any:
        return self.request("GET", path, query=query or None)

    def post(self, path: str, body: Mapping[str, Any]) -> Any:
        return self.request("POST", path, body)

    def put(self, path: str, body: Mapping[str, Any]) -> Any:
        return self.request("PUT", path, body)

    def delete(self, path: str, body: Optional[Mapping[str, Any]] = None) -> Any:
        return self.request("DELETE", path, body)
