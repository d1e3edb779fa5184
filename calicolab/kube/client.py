"""Reaching the lab's Kubernetes API from the workstation: one connection per run.

Two ways in, one interface (:class:`KubeApi`):

* :class:`DirectApi` — the API's REST interface over HTTPS (urllib3), with the credentials of the admin
  kubeconfig in the local state folder (``lab.state_path / "kubeconfig.yaml"``). Its server
  (``https://<control lab ip>:6443``) is not always routable from the workstation, so
  :func:`connect_direct` tries, in this order, the addresses it is given (control's addresses as
  Multipass lists them, the DHCP one first), the kubeconfig's server, then control's management ip, and
  uses the first whose TCP port answers. TLS is still verified: when the address is not the kubeconfig's
  server, the certificate is checked against the DNS name ``kubernetes``, which every k3s serving
  certificate carries.
* :class:`KubectlApi` — the fallback when no address answers: the same requests run as
  ``k3s kubectl`` on control through the pyinfra connector (``host.run_shell_command``).

:class:`Session` is the run's connection: made on first use, reused by every request, remade only after
a request found the API gone (at most every ``RECONNECT_AFTER`` seconds).

Every request carries a timeout (pyinfra runs under gevent; a hung socket would stall the run).
``ApiUnreachable`` means "try again later" (no answer, or the server says it is not ready); every other
``KubeError`` is a definite answer.
"""

from __future__ import annotations

import base64
import json
import math
import os
import shlex
import socket
import ssl
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import quote, urlencode, urlsplit

import urllib3
import yaml

from calicolab.constants import FIELD_MANAGER, SERVER

#: DNS name present in every k3s API serving certificate (also "kubernetes.default", "localhost").
K3S_TLS_SERVER_NAME = "kubernetes"
#: Seconds a TCP probe of a candidate address may take.
PROBE_TIMEOUT = 2.0
#: Seconds any single API request may take.
REQUEST_TIMEOUT = 30
#: Seconds any single ``k3s kubectl`` command on control may take.
KUBECTL_TIMEOUT = 120
KUBECONFIG_NAME = "kubeconfig.yaml"


# --- Errors ------------------------------------------------------------------------------------


class KubeError(Exception):
    """Any failure talking to the API; the message is meant for the user."""


class ApiUnreachable(KubeError):
    """The API does not answer (or answers that it cannot serve now): worth trying again later."""


class NotFound(KubeError):
    """The object, its namespace, or its kind (CRD not there yet) does not exist."""


class ApplyConflict(KubeError):
    """Server-side apply refused: another field manager owns fields we set (HTTP 409)."""


# --- Object helpers ----------------------------------------------------------------------------


def split_api_version(api_version: str) -> tuple[str, str]:
    """``"apps/v1"`` → ``("apps", "v1")``; ``"v1"`` → ``("", "v1")``."""
    group, _, version = api_version.rpartition("/")
    return group, version


def object_ref(obj: dict) -> str:
    """kubectl-style reference: ``deployment.apps/tigera-operator -n tigera-operator``."""
    group, _ = split_api_version(obj.get("apiVersion", ""))
    kind = str(obj.get("kind", "?")).lower()
    meta = obj.get("metadata") or {}
    ref = f"{kind}.{group}/{meta.get('name', '?')}" if group else f"{kind}/{meta.get('name', '?')}"
    if meta.get("namespace"):
        ref += f" -n {meta['namespace']}"
    return ref


def status_message(data: bytes) -> str:
    """The human part of a Kubernetes ``Status`` response body (message plus per-field causes)."""
    text = data.decode("utf-8", "replace")
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip()
    if not isinstance(body, dict):
        return str(body)
    message = body.get("message") or body.get("reason") or json.dumps(body)
    causes = (body.get("details") or {}).get("causes") or []
    extra = []
    for cause in causes:
        text = cause.get("message") or cause.get("reason") or ""
        if cause.get("field") and cause["field"] not in text and cause["field"] not in message:
            text = f"{cause['field']}: {text}"
        if text and text not in message:
            extra.append(text)
    if extra:
        message += " (" + "; ".join(extra) + ")"
    return message


#: Kinds applied with ``force``: the tigera-operator writes its defaults back into the spec of these custom
#: resources (an Update by manager ``operator``), so it owns fields that only the lab's settings decide; without
#: force a changed setting (an IP pool) would meet a conflict with a default it never meant to defend. Every other
#: kind is applied without force: there a conflict means a person changed the field (``kubectl edit``,
#: ``kubectl scale``), and a re-run must say so rather than silently undo it.
FORCED_KINDS = frozenset({("operator.tigera.io", "Installation"), ("operator.tigera.io", "APIServer")})


def force_allowed(obj: dict) -> bool:
    """Whether calicolab takes over conflicting fields of ``obj`` (see ``FORCED_KINDS``).

    Example: ``force_allowed({"apiVersion": "operator.tigera.io/v1", "kind": "Installation"})`` → True
    """
    return (split_api_version(obj.get("apiVersion", ""))[0], obj.get("kind")) in FORCED_KINDS


def conflict_hint(ref: str, message: str) -> str:
    """The conflict, who holds the fields, and the two ways out."""
    return (
        f"{ref}: server-side apply conflict: {message}. Another field manager changed these fields and "
        f"calicolab does not take them over for this kind. Undo that change (set the fields back), or keep "
        f"calicolab's values with `kubectl apply --server-side --field-manager={FIELD_MANAGER} "
        f"--force-conflicts`, then re-run."
    )


# --- Interface -----------------------------------------------------------------------------------


class KubeApi:
    """What the rest of calicolab needs from the API (objects are plain dicts). ``timeout`` bounds
    the request in seconds (default: the way in's own limit)."""

    #: Human description of the way in, e.g. ``https://10.255.255.1:6443 (direct)``.
    description = ""
    #: why this way in and not the direct one ("" for the direct one)
    reason = ""

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None,
            timeout: float | None = None) -> dict | None:
        raise NotImplementedError

    def list(self, api_version: str, kind: str, namespace: str | None = None,
             label_selector: str | None = None, timeout: float | None = None) -> list[dict]:
        return self.snapshot(api_version, kind, namespace, label_selector, timeout)[0]

    def snapshot(self, api_version: str, kind: str, namespace: str | None = None,
                 label_selector: str | None = None, timeout: float | None = None) -> tuple[list[dict], str | None]:
        """The objects and the list's resourceVersion (None when the kind is not served yet or the way in
        does not tell), for :meth:`wait_for_change`."""
        raise NotImplementedError

    def wait_for_change(self, api_version: str, kind: str, namespace: str | None,
                        resource_version: str | None, seconds: float) -> bool:
        """Return True as soon as an object of the kind changed after ``resource_version``, False after
        ``seconds`` without a change seen. This base version just sleeps (a way in that cannot watch)."""
        time.sleep(seconds)
        return False

    def apply(self, obj: dict, dry_run: bool = False, timeout: float | None = None) -> dict:
        """Server-side apply with field manager ``calicolab``, forcing only for the fields of
        :func:`force_allowed` (see there why). Raises NotFound, ApplyConflict or KubeError."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --- Direct connection ----------------------------------------------------------------------------

#: HTTP statuses that mean "not now" (the API server starting, overloaded or restarting)
TRANSIENT_STATUSES = (429, 500, 502, 503, 504)
#: Watch events that report a change (an ``ERROR`` event, e.g. 410 Gone for an expired version, is none)
CHANGE_EVENTS = (b"ADDED", b"MODIFIED", b"DELETED")
#: what urllib3 raises when the API does not answer
CONNECTION_ERRORS = (OSError, urllib3.exceptions.HTTPError)


class DirectApi(KubeApi):
    """The API's REST interface over HTTPS (urllib3), as the Kubernetes API reference describes it.

    Paths are ``/api/v1/...`` for the core group and ``/apis/<group>/<version>/...`` otherwise, with
    ``namespaces/<ns>/`` before the plural for namespaced kinds. A kind's plural and scope come from its
    group version's discovery document (``GET /apis/<group>/<version>``), read on first use and read
    again when a kind is missing from it (a CRD made since). Server-side apply is a ``PATCH`` with
    content type ``application/apply-patch+yaml`` (JSON is YAML) and ``fieldManager``; a watch is a
    ``GET`` with ``watch=true&resourceVersion=...`` whose response is one JSON event per line.

    The client of choice for a one-shot deploy: the official ``kubernetes`` package costs ~0.3 s of
    imports and ~360 modules per run (and pyinfra's per-operation stack inspection slows with every
    module loaded), for the five requests calicolab makes.
    """

    def __init__(self, url: str, ssl_context: ssl.SSLContext, headers: dict[str, str], description: str,
                 tls_name: str | None = None):
        parts = urlsplit(url)
        self.description = description
        self._headers = {"Accept": "application/json", "User-Agent": FIELD_MANAGER, **headers}
        # retry only failed connects (nothing was sent); a request that reached the server is not repeated
        retries = urllib3.util.Retry(total=2, connect=2, read=0, status=0, other=0, redirect=0, backoff_factor=0.3)
        self._pool = urllib3.HTTPSConnectionPool(
            parts.hostname, parts.port or 443, ssl_context=ssl_context, server_hostname=tls_name,
            retries=retries, maxsize=4, block=False,
        )
        self._kinds: dict[str, dict[str, tuple[str, bool]]] = {}  # api version -> kind -> (plural, namespaced)
        try:
            self._request("GET", "/api", what="discovery")
        except KubeError as exc:  # the port answers but it is not (yet) a Kubernetes API serving us
            self.close()
            raise ApiUnreachable(f"API at {description} answered TCP but discovery failed: {exc}") from None

    def close(self) -> None:
        self._pool.close()

    def _timeout(self, timeout: float | None) -> float:
        return REQUEST_TIMEOUT if timeout is None else max(0.1, min(timeout, REQUEST_TIMEOUT))

    def _request(self, method: str, path: str, *, what: str, fields: dict | None = None, body: bytes | None = None,
                 content_type: str | None = None, timeout: float | None = None) -> dict:
        headers = dict(self._headers, **({"Content-Type": content_type} if content_type else {}))
        url = path + (f"?{urlencode(fields)}" if fields else "")
        try:
            response = self._pool.request(method, url, body=body, headers=headers,
                                          timeout=urllib3.Timeout(total=self._timeout(timeout)))
        except CONNECTION_ERRORS as exc:
            raise ApiUnreachable(f"{what}: {self.description}: {_describe(exc)}") from exc
        if response.status == 404:
            raise NotFound(f"{what}: {status_message(response.data)}")
        if response.status == 409:
            raise ApplyConflict(conflict_hint(what, status_message(response.data)))
        if response.status >= 400:
            error = ApiUnreachable if response.status in TRANSIENT_STATUSES else KubeError
            raise error(f"{what}: HTTP {response.status}: {status_message(response.data)}")
        try:
            return json.loads(response.data)
        except ValueError as exc:
            raise KubeError(f"{what}: the API answered HTTP {response.status} with no JSON: {exc}") from None

    def _discovered(self, api_version: str) -> dict[str, tuple[str, bool]]:
        try:
            document = self._request("GET", _group_version_path(api_version), what=f"discovery of {api_version}")
        except NotFound:
            document = {}  # the group version is not served (yet)
        kinds = {item["kind"]: (item["name"], bool(item.get("namespaced")))
                 for item in document.get("resources") or [] if "/" not in item.get("name", "/")}
        self._kinds[api_version] = kinds
        return kinds

    def resource(self, api_version: str, kind: str) -> tuple[str, bool]:
        """``(plural, namespaced)`` of ``kind``; NotFound while the API does not serve it."""
        found = self._kinds.get(api_version, {}).get(kind)
        if found is None:  # not known yet, or a fresh CRD: discover this group version again
            found = self._discovered(api_version).get(kind)
        if found is None:
            raise NotFound(f"the API does not serve kind {kind} in {api_version} (yet)")
        return found

    def _path(self, api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
        plural, namespaced = self.resource(api_version, kind)
        path = _group_version_path(api_version)
        if namespaced and namespace:
            path += f"/namespaces/{quote(namespace, safe='')}"
        path += f"/{plural}"
        return path + (f"/{quote(name, safe='')}" if name else "")

    def get(self, api_version, kind, name, namespace=None, timeout=None):
        try:
            return self._request("GET", self._path(api_version, kind, namespace, name), what=f"get {kind} {name}",
                                 timeout=timeout)
        except NotFound:
            return None

    def snapshot(self, api_version, kind, namespace=None, label_selector=None, timeout=None):
        try:
            path = self._path(api_version, kind, namespace)
        except NotFound:
            return [], None
        result = self._request("GET", path, what=f"list {kind}", timeout=timeout,
                               fields={"labelSelector": label_selector} if label_selector else None)
        return list(result.get("items") or []), (result.get("metadata") or {}).get("resourceVersion") or None

    def wait_for_change(self, api_version, kind, namespace, resource_version, seconds):
        """A watch from ``resource_version``: True at the first event (ADDED, MODIFIED, DELETED), False
        after ``seconds``. Without a version (kind not served yet) it sleeps."""
        if not resource_version:
            return super().wait_for_change(api_version, kind, namespace, resource_version, seconds)
        started = time.monotonic()
        try:
            path = self._path(api_version, kind, namespace)
            fields = {"watch": "true", "resourceVersion": resource_version, "timeoutSeconds": max(1, math.ceil(seconds))}
            response = self._pool.request("GET", f"{path}?{urlencode(fields)}", headers=self._headers, retries=False,
                                          preload_content=False,
                                          timeout=urllib3.Timeout(connect=max(0.1, min(seconds, PROBE_TIMEOUT)),
                                                                  read=max(0.1, seconds)))
            try:
                if response.status == 200 and _first_event_type(response) in CHANGE_EVENTS:
                    return True  # something changed: probe again at once
            finally:
                # the stream is left unread: its connection is closed, not handed to the next request
                response.close()
                response.release_conn()
        except (*CONNECTION_ERRORS, KubeError):
            pass
        # the pause ran out (read timeout), the version expired (410) or the API went away: the next probe
        # finds out which; a watch that fails at once must not turn the pause into a busy loop
        time.sleep(max(0.0, seconds - (time.monotonic() - started)))
        return False

    def apply(self, obj, dry_run=False, timeout=None):
        meta = obj.get("metadata") or {}
        fields = {"fieldManager": FIELD_MANAGER}
        if force_allowed(obj):
            fields["force"] = "true"
        if dry_run:
            fields["dryRun"] = "All"
        # a cluster-scoped kind's path has no namespace (see _path)
        path = self._path(obj.get("apiVersion", ""), obj.get("kind", ""), meta.get("namespace") or "default",
                          meta.get("name", ""))
        return self._request("PATCH", path, what=object_ref(obj), fields=fields, body=json.dumps(obj).encode(),
                             content_type="application/apply-patch+yaml", timeout=timeout)


def _group_version_path(api_version: str) -> str:
    return "/api/v1" if api_version == "v1" else f"/apis/{api_version}"


def _first_event_type(response) -> bytes:
    """The ``type`` of the first event of a watch response (one JSON object per line)."""
    line = b""
    for chunk in response.stream(None, decode_content=False):
        line += chunk
        if b"\n" in line:
            break
    try:
        return str(json.loads(line.split(b"\n", 1)[0]).get("type", "")).encode()
    except (ValueError, AttributeError):
        return b""


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


# --- Candidate addresses -------------------------------------------------------------------------


def kubeconfig_path(lab) -> Path:
    return Path(lab.state_path) / KUBECONFIG_NAME


def load_kubeconfig(path: Path) -> dict:
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict) or not data.get("clusters"):
        raise KubeError(f"{path} is not a kubeconfig")
    return data


def kubeconfig_server(config: dict) -> str:
    """The server URL of the current context's cluster."""
    server = _current(config)[0].get("server")
    if not server:
        raise KubeError("kubeconfig cluster has no server")
    return server


def _format_url(address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"https://{host}:{port}"


def candidate_urls(server: str, lab, addresses: Iterable[str] = ()) -> list[str]:
    """The URLs to try, in order, without duplicates: ``addresses`` (control's addresses as Multipass
    lists them, its DHCP address first: the one the workstation can route to), the kubeconfig's server,
    then control's management ip, all on the API port. The lab and management networks exist only
    between the VMs, so trying them first would send the workstation's packets to its default gateway
    and wait.

    Example: ``candidate_urls("https://198.19.0.1:6443", lab, ["192.168.64.5"])`` →
    ``["https://192.168.64.5:6443", "https://198.19.0.1:6443", "https://<mgmt ip>:6443"]``
    """
    port = lab.k3s_api_port
    urls: list[str] = []
    for address in [*addresses, server, lab.vms[SERVER].mgmt_ip]:
        if address:
            text = str(address)
            url = text.rstrip("/") if "://" in text else _format_url(text, port)
            if url not in urls:
                urls.append(url)
    return urls


def tcp_answers(url: str, timeout: float = PROBE_TIMEOUT) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _current(config: dict) -> tuple[dict, dict]:
    """The cluster and the user of the kubeconfig's current context (the first ones without a context)."""
    contexts = {c["name"]: c.get("context") or {} for c in config.get("contexts") or []}
    context = contexts.get(config.get("current-context") or "") or {}
    clusters = {c["name"]: c.get("cluster") or {} for c in config.get("clusters") or []}
    users = {u["name"]: u.get("user") or {} for u in config.get("users") or []}
    cluster = clusters.get(context.get("cluster") or "")
    user = users.get(context.get("user") or "")
    return (cluster if cluster is not None else next(iter(clusters.values()), {}),
            user if user is not None else next(iter(users.values()), {}))


def _pem(entry: dict, key: str, base: Path) -> bytes | None:
    """``<key>-data`` (base64) or the file ``<key>`` (relative to the kubeconfig's folder) of ``entry``."""
    if entry.get(f"{key}-data"):
        return base64.b64decode(entry[f"{key}-data"])
    if entry.get(key):
        return (base / entry[key]).read_bytes()
    return None


def tls_context(config: dict, base: Path) -> tuple[ssl.SSLContext, dict[str, str]]:
    """The TLS context (the cluster's CA, the user's client certificate) and the headers (a bearer token)
    of the kubeconfig's current context. TLS is always verified."""
    cluster, user = _current(config)
    ca = _pem(cluster, "certificate-authority", base)
    context = ssl.create_default_context(cadata=ca.decode()) if ca else ssl.create_default_context()
    cert, key = _pem(user, "client-certificate", base), _pem(user, "client-key", base)
    if cert and key:
        # ssl loads a certificate chain from files only: a private folder (0700), removed at once
        with tempfile.TemporaryDirectory(prefix="calicolab-tls-", ignore_cleanup_errors=True) as scratch:
            folder = Path(scratch)
            for name, data in (("cert.pem", cert), ("key.pem", key)):
                fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
            context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    headers = {"Authorization": f"Bearer {user['token']}"} if user.get("token") else {}
    return context, headers


def direct_api(url: str, server: str, credentials: tuple[ssl.SSLContext, dict[str, str]]) -> DirectApi:
    """A DirectApi for ``url`` with ``credentials`` (:func:`tls_context`) of a kubeconfig whose server is
    ``server``: TLS is checked against the name ``kubernetes`` when ``url`` is another address."""
    tls_name, note = None, ""
    if urlsplit(url).hostname != urlsplit(server).hostname:
        tls_name, note = K3S_TLS_SERVER_NAME, f", TLS name {K3S_TLS_SERVER_NAME}"
    context, headers = credentials
    return DirectApi(url, context, headers, f"{url} (direct{note})", tls_name=tls_name)


def connect_direct(lab, addresses: Iterable[str] = ()) -> DirectApi:
    """Connect straight to the API or raise ApiUnreachable naming every address tried."""
    path = kubeconfig_path(lab)
    if not path.exists():
        raise ApiUnreachable(f"no kubeconfig at {path} (the k3s phase writes it)")
    try:
        config = load_kubeconfig(path)
        server = kubeconfig_server(config)
        credentials = tls_context(config, path.parent)  # once, whichever address answers
    except (OSError, ValueError, KeyError, TypeError, ssl.SSLError, yaml.YAMLError, KubeError) as exc:
        raise ApiUnreachable(f"cannot use {path}: {_describe(exc)}") from exc
    tried = []
    for url in candidate_urls(server, lab, addresses):
        if not tcp_answers(url):
            tried.append(f"{url} (no answer within {PROBE_TIMEOUT:g}s)")
            continue
        try:
            return direct_api(url, server, credentials)
        except ApiUnreachable as exc:
            tried.append(f"{url} ({exc})")
    raise ApiUnreachable("API not reachable from the workstation: tried " + ", ".join(tried))


# --- Fallback: k3s kubectl on control through the pyinfra connector -----------------------------


def kubectl_resource_arg(api_version: str, kind: str) -> str:
    """``Deployment`` in ``apps/v1`` → ``Deployment.v1.apps`` (kubectl's kind.version.group)."""
    group, version = split_api_version(api_version)
    return f"{kind}.{version}.{group}" if group else kind


class KubectlApi(KubeApi):
    """Runs ``k3s kubectl`` on control (``host`` is the pyinfra Host of control). It cannot watch:
    :meth:`wait_for_change` sleeps."""

    #: what kubectl says when the API server does not answer (yet): worth trying again
    UNREACHABLE_MARKERS = ("connection refused", "unable to connect to the server", "serviceunavailable",
                           "the server is currently unable", "i/o timeout", "tls handshake timeout")

    def __init__(self, host):
        self.host = host
        self.description = f"`k3s kubectl` on {getattr(host, 'name', 'control')} (through the connector)"

    def run(self, args: list[str], stdin: str | None = None, timeout: float | None = None) -> tuple[bool, str, str]:
        from pyinfra.api import StringCommand
        from pyinfra.api.exceptions import PyinfraError

        seconds = KUBECTL_TIMEOUT if timeout is None else max(1, min(KUBECTL_TIMEOUT, math.ceil(timeout)))
        command = StringCommand(f"k3s kubectl --request-timeout={seconds}s " + " ".join(shlex.quote(a) for a in args))
        kwargs: dict[str, Any] = {"_timeout": seconds + 5, "_sudo": True}
        if stdin is not None:
            kwargs["_stdin"] = stdin
        try:
            ok, output = self.host.run_shell_command(command, print_output=False, print_input=False, **kwargs)
        except (OSError, TimeoutError, PyinfraError) as exc:  # control not running, connector timeout
            raise ApiUnreachable(f"{self.description}: {_describe(exc)}") from exc
        return bool(ok), getattr(output, "stdout", "") or "", getattr(output, "stderr", "") or ""

    def check(self) -> None:
        """Raise ApiUnreachable unless ``k3s kubectl`` really answers (a phantom VM answers
        every command with empty success)."""
        ok, out, err = self.run(["get", "--raw", "/readyz"])
        if not ok or out.strip() != "ok":
            detail = (err or out).strip().splitlines()
            raise ApiUnreachable(
                f"{self.description} does not answer" + (f": {detail[-1]}" if detail else " (no output)")
            )

    def _error(self, ref: str, err: str) -> KubeError:
        text = err.strip()
        lower = text.lower()
        if "conflict" in lower and "apply failed" in lower:
            return ApplyConflict(conflict_hint(ref, text))
        if "notfound" in lower or "not found" in lower or "no matches for kind" in lower or (
            "doesn't have a resource type" in lower
        ):
            return NotFound(f"{ref}: {text}")
        if any(marker in lower for marker in self.UNREACHABLE_MARKERS):
            return ApiUnreachable(f"{ref}: {self.description}: {text}")
        return KubeError(f"{ref}: {text or 'k3s kubectl failed without a message'}")

    def get(self, api_version, kind, name, namespace=None, timeout=None):
        args = ["get", kubectl_resource_arg(api_version, kind), name, "-o", "json", "--ignore-not-found"]
        if namespace:
            args += ["-n", namespace]
        ok, out, err = self.run(args, timeout=timeout)
        if not ok:
            error = self._error(f"{kind} {name}", err)
            if isinstance(error, NotFound):
                return None
            raise error
        return json.loads(out) if out.strip() else None

    def snapshot(self, api_version, kind, namespace=None, label_selector=None, timeout=None):
        args = ["get", kubectl_resource_arg(api_version, kind), "-o", "json"]
        args += ["-n", namespace] if namespace else ["--all-namespaces"]
        if label_selector:
            args += ["-l", label_selector]
        ok, out, err = self.run(args, timeout=timeout)
        if not ok:
            error = self._error(f"{kind} list", err)
            if isinstance(error, NotFound):
                return [], None
            raise error
        return list((json.loads(out) if out.strip() else {}).get("items") or []), None

    def apply(self, obj, dry_run=False, timeout=None):
        ref = object_ref(obj)
        args = ["apply", "--server-side", f"--field-manager={FIELD_MANAGER}", "-o", "json", "-f", "-"]
        if force_allowed(obj):
            args.insert(2, "--force-conflicts")
        if dry_run:
            args.insert(2, "--dry-run=server")
        ok, out, err = self.run(args, stdin=json.dumps(obj), timeout=timeout)
        if not ok:
            raise self._error(ref, err or out)
        return json.loads(out) if out.strip() else obj


# --- The run's connection ------------------------------------------------------------------------

#: seconds before a failed connection is tried again (so a run's many requests do not each wait for
#: addresses that do not answer)
RECONNECT_AFTER = 10.0


class Session(KubeApi):
    """The run's one connection: made by ``connect()`` on first use, reused by every request, made
    again only after a request found the API gone, and then at most every ``RECONNECT_AFTER`` seconds
    (a failure to connect is remembered that long, see :meth:`forget_failure`). ``log`` hears once
    that the ``k3s kubectl`` fallback is used, and why (again only if the way in changes).

    Example::

        session = Session(lambda: connect(lab, control, addresses), log=host.log)
        session.get("v1", "Node", "control")       # connects
        session.list("v1", "Node")                 # same connection
    """

    def __init__(self, connect: Callable[[], KubeApi], log: Callable[[str], Any] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self._connect = connect
        self._log = log
        self._clock = clock
        self._api: KubeApi | None = None
        self._failure: ApiUnreachable | None = None
        self._failed_at = 0.0
        self._said = ""

    @property
    def description(self) -> str:
        return self._api.description if self._api else "not connected"

    def current(self) -> KubeApi:
        """The connection, made now if there is none; raises ApiUnreachable."""
        if self._api is not None:
            return self._api
        if self._failure is not None and self._clock() - self._failed_at < RECONNECT_AFTER:
            raise self._failure
        try:
            self._api = self._connect()
        except ApiUnreachable as exc:
            self._failure, self._failed_at = exc, self._clock()
            raise
        self._failure = None
        if self._log and self._api.reason and self._api.description != self._said:
            self._said = self._api.description
            self._log(f"{self._api.reason}; using {self._api.description}")
        return self._api

    def forget_failure(self) -> None:
        """Try to connect again at the next request (the cluster may have changed since: the run moved
        from planning to execution)."""
        self._failure = None

    def _through(self, request: Callable[[KubeApi], Any]):
        api = self.current()
        try:
            return request(api)
        except ApiUnreachable:
            if api is self._api:  # gone: the next request connects again (an API server restart)
                self._api = None
                api.close()
            raise

    def get(self, api_version, kind, name, namespace=None, timeout=None):
        return self._through(lambda api: api.get(api_version, kind, name, namespace, timeout=timeout))

    def snapshot(self, api_version, kind, namespace=None, label_selector=None, timeout=None):
        return self._through(lambda api: api.snapshot(api_version, kind, namespace, label_selector, timeout=timeout))

    def wait_for_change(self, api_version, kind, namespace, resource_version, seconds):
        if self._api is None:
            return super().wait_for_change(api_version, kind, namespace, resource_version, seconds)
        return self._api.wait_for_change(api_version, kind, namespace, resource_version, seconds)

    def apply(self, obj, dry_run=False, timeout=None):
        return self._through(lambda api: api.apply(obj, dry_run=dry_run, timeout=timeout))

    def close(self) -> None:
        if self._api is not None:
            self._api.close()
            self._api = None


def connect(lab, host=None, addresses: Iterable[str] = ()) -> KubeApi:
    """The best way in: direct, else ``k3s kubectl`` on ``host`` (control) when given. Raises
    ApiUnreachable with every reason when neither works."""
    try:
        return connect_direct(lab, addresses)
    except ApiUnreachable as direct_error:
        if host is None:
            raise
        fallback = KubectlApi(host)
        try:
            fallback.check()
        except KubeError as fallback_error:
            raise ApiUnreachable(f"{direct_error}; fallback {fallback_error}") from None
        fallback.reason = str(direct_error)
        return fallback
