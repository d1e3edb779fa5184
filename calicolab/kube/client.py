"""Reaching the lab's Kubernetes API from the workstation: one connection per run.

Two ways in, one interface (:class:`KubeApi`):

* :class:`DirectApi` — the official ``kubernetes`` client (``DynamicClient``) built from the admin
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

import functools
import json
import math
import shlex
import shutil
import socket
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import urlsplit

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
    if "/" in api_version:
        group, version = api_version.split("/", 1)
        return group, version
    return "", api_version


def object_ref(obj: dict) -> str:
    """kubectl-style reference: ``deployment.apps/tigera-operator -n tigera-operator``."""
    group, _ = split_api_version(obj.get("apiVersion", ""))
    kind = str(obj.get("kind", "?")).lower()
    meta = obj.get("metadata") or {}
    ref = f"{kind}.{group}/{meta.get('name', '?')}" if group else f"{kind}/{meta.get('name', '?')}"
    if meta.get("namespace"):
        ref += f" -n {meta['namespace']}"
    return ref


def status_message(body: Any) -> str:
    """The human part of a Kubernetes ``Status`` body (message plus per-field causes)."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            return body.strip()
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


@functools.lru_cache(maxsize=None)
def _timeout_api_client_class():
    from kubernetes.client import ApiClient

    class TimeoutApiClient(ApiClient):
        """ApiClient that never sends a request without a timeout (discovery included)."""

        default_request_timeout: float = REQUEST_TIMEOUT

        def call_api(self, *args, _request_timeout=None, **kwargs):
            return super().call_api(*args, _request_timeout=_request_timeout or self.default_request_timeout, **kwargs)

    return TimeoutApiClient


#: HTTP statuses that mean "not now" (the API server starting, overloaded or restarting)
TRANSIENT_STATUSES = (429, 500, 502, 503, 504)


def _connection_errors() -> tuple[type[BaseException], ...]:
    return (OSError, urllib3.exceptions.HTTPError)


class DirectApi(KubeApi):
    def __init__(self, api_client, description: str, request_timeout: float = REQUEST_TIMEOUT):
        from kubernetes.dynamic import DynamicClient

        self.api_client = api_client
        self.description = description
        self.request_timeout = request_timeout
        # A private discovery cache: the default one in $TMPDIR is keyed by URL only and survives
        # lab rebuilds (stale CRD kinds). Removed on close, or when the run ends.
        cache_dir = tempfile.mkdtemp(prefix="calicolab-discovery-")
        self._remove_cache = weakref.finalize(self, shutil.rmtree, cache_dir, True)
        try:
            self.dynamic = DynamicClient(api_client, cache_file=str(Path(cache_dir) / "discovery.json"))
        except _connection_errors() as exc:
            self.close()
            raise ApiUnreachable(f"API at {description} answered TCP but not discovery: {_describe(exc)}") from exc
        except Exception as exc:  # the port answers but it is not (yet) a Kubernetes API
            self.close()
            raise ApiUnreachable(f"API at {description} answered TCP but discovery failed: {_describe(exc)}") from exc

    def close(self) -> None:
        self._remove_cache()
        self.api_client.close()

    def _timeout(self, timeout: float | None) -> float:
        return self.request_timeout if timeout is None else max(0.1, min(timeout, self.request_timeout))

    def resource(self, api_version: str, kind: str):
        from kubernetes.dynamic.exceptions import ResourceNotFoundError

        try:
            # LazyDiscoverer invalidates its cache and re-discovers on a miss (fresh CRDs).
            return self.dynamic.resources.get(api_version=api_version, kind=kind)
        except ResourceNotFoundError:
            raise NotFound(f"the API does not serve kind {kind} in {api_version} (yet)") from None
        except _connection_errors() as exc:
            raise ApiUnreachable(f"discovery of {kind} ({api_version}): {_describe(exc)}") from exc

    def _call(self, what: str, func: Callable, *args, timeout: float | None = None, **kwargs):
        from kubernetes.dynamic.exceptions import ConflictError, DynamicApiError, NotFoundError

        kwargs["_request_timeout"] = self._timeout(timeout)
        try:
            return func(*args, **kwargs)
        except NotFoundError as exc:
            raise NotFound(f"{what}: {status_message(exc.body)}") from None
        except ConflictError as exc:
            raise ApplyConflict(conflict_hint(what, status_message(exc.body))) from None
        except DynamicApiError as exc:
            error = ApiUnreachable if exc.status in TRANSIENT_STATUSES else KubeError
            raise error(f"{what}: HTTP {exc.status}: {status_message(exc.body)}") from None
        except _connection_errors() as exc:
            raise ApiUnreachable(f"{what}: {self.description}: {_describe(exc)}") from exc

    def get(self, api_version, kind, name, namespace=None, timeout=None):
        try:
            resource = self.resource(api_version, kind)
        except NotFound:
            return None
        ns = namespace if resource.namespaced else None
        try:
            result = self._call(f"get {kind} {name}", self.dynamic.get, resource, name=name, namespace=ns,
                                timeout=timeout)
        except NotFound:
            return None
        return result.to_dict()

    def snapshot(self, api_version, kind, namespace=None, label_selector=None, timeout=None):
        try:
            resource = self.resource(api_version, kind)
        except NotFound:
            return [], None
        ns = namespace if resource.namespaced else None
        result = self._call(
            f"list {kind}", self.dynamic.get, resource, namespace=ns, label_selector=label_selector, timeout=timeout
        ).to_dict()
        return list(result.get("items") or []), (result.get("metadata") or {}).get("resourceVersion") or None

    def wait_for_change(self, api_version, kind, namespace, resource_version, seconds):
        """A watch from ``resource_version``: True at the first event (ADDED, MODIFIED, DELETED), False
        after ``seconds``. Without a version (kind not served yet) it sleeps."""
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        if not resource_version:
            return super().wait_for_change(api_version, kind, namespace, resource_version, seconds)
        try:
            resource = self.resource(api_version, kind)
        except NotFound:
            return super().wait_for_change(api_version, kind, namespace, resource_version, seconds)
        watcher = watch.Watch()
        stream = watcher.stream(
            resource.get,
            namespace=namespace if resource.namespaced else None,
            resource_version=resource_version,
            timeout_seconds=max(1, math.ceil(seconds)),
            _request_timeout=max(0.1, seconds),
            serialize=False,
        )
        started = time.monotonic()
        try:
            for _event in stream:
                return True  # something changed: probe again at once
        except (*_connection_errors(), ApiException):
            # the pause ran out (read timeout), the version expired (410) or the API went away: the next
            # probe finds out which; a watch that fails at once must not turn the pause into a busy loop
            time.sleep(max(0.0, seconds - (time.monotonic() - started)))
        finally:
            watcher.stop()
        return False

    def apply(self, obj, dry_run=False, timeout=None):
        ref = object_ref(obj)
        resource = self.resource(obj.get("apiVersion", ""), obj.get("kind", ""))
        namespace = None
        if resource.namespaced:
            namespace = (obj.get("metadata") or {}).get("namespace") or "default"
        kwargs: dict[str, Any] = {
            "namespace": namespace,
            "field_manager": FIELD_MANAGER,
            "force_conflicts": force_allowed(obj),
        }
        if dry_run:
            kwargs["dry_run"] = "All"
        result = self._call(ref, self.dynamic.server_side_apply, resource, body=obj, timeout=timeout, **kwargs)
        return result.to_dict() if hasattr(result, "to_dict") else result


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
    contexts = {c["name"]: c.get("context") or {} for c in config.get("contexts") or []}
    clusters = {c["name"]: c.get("cluster") or {} for c in config.get("clusters") or []}
    current = config.get("current-context")
    cluster_name = (contexts.get(current) or {}).get("cluster") if current else None
    cluster = clusters.get(cluster_name) if cluster_name else None
    if cluster is None:
        cluster = next(iter(clusters.values()))
    server = cluster.get("server")
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


def direct_api(kubeconfig: Path, url: str, server: str, request_timeout: float = REQUEST_TIMEOUT) -> DirectApi:
    """A DirectApi for ``url`` using the credentials of ``kubeconfig`` (whose server is ``server``)."""
    from kubernetes import config as kube_config
    from kubernetes.client import Configuration

    configuration = Configuration()
    try:
        kube_config.load_kube_config(
            config_file=str(kubeconfig), client_configuration=configuration, persist_config=False
        )
    except kube_config.ConfigException as exc:
        raise ApiUnreachable(f"cannot use {kubeconfig}: {exc}") from exc
    configuration.host = url
    note = ""
    if urlsplit(url).hostname != urlsplit(server).hostname:
        configuration.tls_server_name = K3S_TLS_SERVER_NAME
        note = f", TLS name {K3S_TLS_SERVER_NAME}"
    # retry only failed connects (nothing was sent); a request that reached the server is not repeated
    configuration.retries = urllib3.util.Retry(total=2, connect=2, read=0, status=0, other=0, redirect=0,
                                               backoff_factor=0.3)
    client_class = _timeout_api_client_class()
    api_client = client_class(configuration=configuration)
    api_client.default_request_timeout = request_timeout
    return DirectApi(api_client, f"{url} (direct{note})", request_timeout=request_timeout)


def connect_direct(lab, addresses: Iterable[str] = ()) -> DirectApi:
    """Connect straight to the API or raise ApiUnreachable naming every address tried."""
    path = kubeconfig_path(lab)
    if not path.exists():
        raise ApiUnreachable(f"no kubeconfig at {path} (the k3s phase writes it)")
    try:
        config = load_kubeconfig(path)
        server = kubeconfig_server(config)
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise ApiUnreachable(f"cannot read {path}: {exc}") from exc
    tried = []
    for url in candidate_urls(server, lab, addresses):
        if not tcp_answers(url):
            tried.append(f"{url} (no answer within {PROBE_TIMEOUT:g}s)")
            continue
        try:
            return direct_api(path, url, server)
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

    def __init__(self, host, kubectl: str = "k3s kubectl", sudo: bool = True, timeout: int = KUBECTL_TIMEOUT):
        self.host = host
        self.kubectl = kubectl
        self.sudo = sudo
        self.timeout = timeout
        self.description = f"`{kubectl}` on {getattr(host, 'name', 'control')} (through the connector)"

    def run(self, args: list[str], stdin: str | None = None, timeout: float | None = None) -> tuple[bool, str, str]:
        from pyinfra.api import StringCommand
        from pyinfra.api.exceptions import PyinfraError

        seconds = self.timeout if timeout is None else max(1, min(self.timeout, math.ceil(timeout)))
        command = StringCommand(
            self.kubectl + f" --request-timeout={seconds}s " + " ".join(shlex.quote(a) for a in args)
        )
        kwargs: dict[str, Any] = {"_timeout": seconds + 5}
        if self.sudo:
            kwargs["_sudo"] = True
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
