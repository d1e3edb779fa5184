"""Reaching the lab's Kubernetes API from the workstation.

Two ways in, one interface (:class:`KubeApi`):

* :class:`DirectApi` — the official ``kubernetes`` client (``DynamicClient``) built from the admin
  kubeconfig in the local state folder (``lab.state_path / "kubeconfig.yaml"``). Its server
  (``https://<control lab ip>:6443``) is not always routable from the workstation, so
  :func:`connect` probes candidate addresses (the kubeconfig's server, control's management ip,
  then any extra addresses, e.g. control's DHCP address) and uses the first whose TCP port answers.
  TLS is still verified: when the address is not the kubeconfig's server, the certificate is
  checked against the DNS name ``kubernetes``, which every k3s serving certificate carries.
* :class:`KubectlApi` — the fallback when no candidate answers: the same requests run as
  ``k3s kubectl`` on control through the pyinfra connector (``host.run_shell_command``).

Every request carries a timeout (pyinfra runs under gevent; a hung socket would stall the run).
"""

from __future__ import annotations

import functools
import json
import shlex
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import urlsplit

import urllib3
import yaml

from calicolab.constants import FIELD_MANAGER

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
    """Neither a direct connection nor the ``k3s kubectl`` fallback works."""


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


def conflict_hint(ref: str, message: str) -> str:
    return (
        f"{ref}: server-side apply conflict: {message}. Another field manager owns these fields; "
        f"calicolab does not force ownership. Remove the other manager's change (or apply it with "
        f"`kubectl apply --server-side --field-manager={FIELD_MANAGER} --force-conflicts`) and re-run."
    )


# --- Interface -----------------------------------------------------------------------------------


class KubeApi:
    """What the rest of calicolab needs from the API (objects are plain dicts)."""

    #: Human description of the way in, e.g. ``https://10.255.255.1:6443 (direct)``.
    description = ""
    via_kubectl = False

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict | None:
        raise NotImplementedError

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        label_selector: str | None = None,
    ) -> list[dict]:
        raise NotImplementedError

    def apply(self, obj: dict, dry_run: bool = False) -> dict:
        """Server-side apply (field manager ``calicolab``, no forcing). Raises NotFound,
        ApplyConflict or KubeError."""
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

        def call_api(self, method, url, header_params=None, body=None, post_params=None, _request_timeout=None):
            return super().call_api(
                method,
                url,
                header_params=header_params,
                body=body,
                post_params=post_params,
                _request_timeout=_request_timeout or self.default_request_timeout,
            )

    return TimeoutApiClient


class DirectApi(KubeApi):
    def __init__(self, api_client, description: str, request_timeout: float = REQUEST_TIMEOUT):
        from kubernetes.dynamic import DynamicClient

        self.api_client = api_client
        self.description = description
        self.request_timeout = request_timeout
        # A private discovery cache: the default one in $TMPDIR is keyed by URL only and survives
        # lab rebuilds (stale CRD kinds).
        self._cache_dir = tempfile.mkdtemp(prefix="calicolab-discovery-")
        try:
            self.dynamic = DynamicClient(api_client, cache_file=str(Path(self._cache_dir) / "discovery.json"))
        except Exception as exc:  # discovery failed: the port answers but it is not (yet) an API
            self.close()
            raise KubeError(f"API at {description} answered TCP but discovery failed: {_describe(exc)}") from exc

    def close(self) -> None:
        shutil.rmtree(self._cache_dir, ignore_errors=True)
        try:
            self.api_client.close()
        except Exception:
            pass

    def resource(self, api_version: str, kind: str):
        from kubernetes.dynamic.exceptions import ResourceNotFoundError

        try:
            # LazyDiscoverer invalidates its cache and re-discovers on a miss (fresh CRDs).
            return self.dynamic.resources.get(api_version=api_version, kind=kind)
        except ResourceNotFoundError:
            raise NotFound(f"the API does not serve kind {kind} in {api_version} (yet)") from None
        except Exception as exc:
            raise KubeError(f"discovery of {kind} ({api_version}) failed: {_describe(exc)}") from exc

    def _call(self, what: str, func: Callable, *args, **kwargs):
        from kubernetes.dynamic.exceptions import ConflictError, DynamicApiError, NotFoundError

        kwargs.setdefault("_request_timeout", self.request_timeout)
        try:
            return func(*args, **kwargs)
        except NotFoundError as exc:
            raise NotFound(f"{what}: {status_message(exc.body)}") from None
        except ConflictError as exc:
            raise ApplyConflict(conflict_hint(what, status_message(exc.body))) from None
        except DynamicApiError as exc:
            raise KubeError(f"{what}: HTTP {exc.status}: {status_message(exc.body)}") from None
        except Exception as exc:
            raise KubeError(f"{what}: {_describe(exc)}") from exc

    def get(self, api_version, kind, name, namespace=None):
        try:
            resource = self.resource(api_version, kind)
        except NotFound:
            return None
        ns = namespace if resource.namespaced else None
        try:
            result = self._call(f"get {kind} {name}", self.dynamic.get, resource, name=name, namespace=ns)
        except NotFound:
            return None
        return result.to_dict()

    def list(self, api_version, kind, namespace=None, label_selector=None):
        try:
            resource = self.resource(api_version, kind)
        except NotFound:
            return []
        ns = namespace if resource.namespaced else None
        result = self._call(
            f"list {kind}", self.dynamic.get, resource, namespace=ns, label_selector=label_selector
        ).to_dict()
        return list(result.get("items") or [])

    def apply(self, obj, dry_run=False):
        ref = object_ref(obj)
        resource = self.resource(obj.get("apiVersion", ""), obj.get("kind", ""))
        namespace = None
        if resource.namespaced:
            namespace = (obj.get("metadata") or {}).get("namespace") or "default"
        kwargs: dict[str, Any] = {
            "namespace": namespace,
            "field_manager": FIELD_MANAGER,
            "force_conflicts": False,
        }
        if dry_run:
            kwargs["dry_run"] = "All"
        result = self._call(ref, self.dynamic.server_side_apply, resource, body=obj, **kwargs)
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


def candidate_urls(server: str, lab, extra_addresses: Iterable[str] = ()) -> list[str]:
    """Control's addresses as Multipass reports them first (its DHCP address, which the workstation
    can route to, comes first), then the kubeconfig's server, then control's management ip (all on the
    API port), without duplicates. The lab and management networks exist only between the VMs, so
    trying them first would send the workstation's packets to its default gateway and wait."""
    port = lab.k3s_api_port
    control = lab.server
    urls: list[str] = []
    for address in [*extra_addresses, server, control.mgmt_ip]:
        if address:
            text = str(address)
            url = text.rstrip("/") if "://" in text else _format_url(text, port)
            if url not in urls:
                urls.append(url)
    return urls


#: seconds a "no answer" is remembered, so that a run's many ops do not each wait for unroutable
#: addresses (an answering address is always probed again: that is fast)
NEGATIVE_PROBE_TTL = 30.0
_no_answer: dict[str, float] = {}


def _probe(url: str) -> bool:
    now = time.monotonic()
    if now - _no_answer.get(url, -NEGATIVE_PROBE_TTL) < NEGATIVE_PROBE_TTL:
        return False
    if tcp_answers(url):
        _no_answer.pop(url, None)
        return True
    _no_answer[url] = now
    return False


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
    kube_config.load_kube_config(
        config_file=str(kubeconfig), client_configuration=configuration, persist_config=False
    )
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


def connect_direct(lab, extra_addresses: Iterable[str] = ()) -> DirectApi:
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
    for url in candidate_urls(server, lab, extra_addresses):
        if not _probe(url):
            tried.append(f"{url} (no answer within {PROBE_TIMEOUT:g}s)")
            continue
        try:
            return direct_api(path, url, server)
        except KubeError as exc:
            tried.append(f"{url} ({exc})")
        except Exception as exc:
            tried.append(f"{url} ({_describe(exc)})")
    raise ApiUnreachable("API not reachable from the workstation: tried " + ", ".join(tried))


# --- Fallback: k3s kubectl on control through the pyinfra connector -----------------------------


def kubectl_resource_arg(api_version: str, kind: str) -> str:
    """``Deployment`` in ``apps/v1`` → ``Deployment.v1.apps`` (kubectl's kind.version.group)."""
    group, version = split_api_version(api_version)
    return f"{kind}.{version}.{group}" if group else kind


class KubectlApi(KubeApi):
    """Runs ``k3s kubectl`` on control (``host`` is the pyinfra Host of control)."""

    via_kubectl = True

    def __init__(self, host, kubectl: str = "k3s kubectl", sudo: bool = True, timeout: int = KUBECTL_TIMEOUT):
        self.host = host
        self.kubectl = kubectl
        self.sudo = sudo
        self.timeout = timeout
        self.description = f"`{kubectl}` on {getattr(host, 'name', 'control')} (through the connector)"

    def run(self, args: list[str], stdin: str | None = None, ok_codes=(0,)) -> tuple[bool, str, str]:
        from pyinfra.api import StringCommand

        command = StringCommand(self.kubectl + " " + " ".join(shlex.quote(a) for a in args))
        kwargs: dict[str, Any] = {"_timeout": self.timeout, "_success_exit_codes": list(ok_codes)}
        if self.sudo:
            kwargs["_sudo"] = True
        if stdin is not None:
            kwargs["_stdin"] = stdin
        try:
            ok, output = self.host.run_shell_command(command, print_output=False, print_input=False, **kwargs)
        except Exception as exc:
            raise KubeError(f"{self.description}: {_describe(exc)}") from exc
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

    @staticmethod
    def _error(ref: str, err: str) -> KubeError:
        text = err.strip()
        lower = text.lower()
        if "conflict" in lower and "apply failed" in lower:
            return ApplyConflict(conflict_hint(ref, text))
        if "notfound" in lower or "not found" in lower or "no matches for kind" in lower or (
            "doesn't have a resource type" in lower
        ):
            return NotFound(f"{ref}: {text}")
        return KubeError(f"{ref}: {text or 'k3s kubectl failed without a message'}")

    def get(self, api_version, kind, name, namespace=None):
        args = ["get", kubectl_resource_arg(api_version, kind), name, "-o", "json", "--ignore-not-found"]
        if namespace:
            args += ["-n", namespace]
        ok, out, err = self.run(args)
        if not ok:
            error = self._error(f"{kind} {name}", err)
            if isinstance(error, NotFound):
                return None
            raise error
        return json.loads(out) if out.strip() else None

    def list(self, api_version, kind, namespace=None, label_selector=None):
        args = ["get", kubectl_resource_arg(api_version, kind), "-o", "json"]
        args += ["-n", namespace] if namespace else ["--all-namespaces"]
        if label_selector:
            args += ["-l", label_selector]
        ok, out, err = self.run(args)
        if not ok:
            error = self._error(f"{kind} list", err)
            if isinstance(error, NotFound):
                return []
            raise error
        return list((json.loads(out) if out.strip() else {}).get("items") or [])

    def apply(self, obj, dry_run=False):
        ref = object_ref(obj)
        args = ["apply", "--server-side", f"--field-manager={FIELD_MANAGER}", "-o", "json", "-f", "-"]
        if dry_run:
            args.insert(2, "--dry-run=server")
        ok, out, err = self.run(args, stdin=json.dumps(obj))
        if not ok:
            raise self._error(ref, err or out)
        return json.loads(out) if out.strip() else obj

    def diff(self, manifest_yaml: str) -> tuple[bool, str]:
        """``k3s kubectl diff --server-side``: (differs, diff text). Exit 1 means "differs"."""
        args = ["diff", "--server-side", f"--field-manager={FIELD_MANAGER}", "-f", "-"]
        ok, out, err = self.run(args, stdin=manifest_yaml, ok_codes=(0, 1))
        if not ok:
            raise KubeError(f"kubectl diff failed: {(err or out).strip()}")
        return bool(out.strip()), out


# --- Entry point ------------------------------------------------------------------------------


def connect(
    lab,
    host=None,
    extra_addresses: Iterable[str] = (),
    log: Callable[[str], Any] | None = None,
    allow_fallback: bool = True,
) -> KubeApi:
    """The best way in: direct, else ``k3s kubectl`` on ``host`` (control). Raises ApiUnreachable
    with every reason when neither works. ``log`` receives one line saying which way is used when
    it is the fallback."""
    try:
        return connect_direct(lab, extra_addresses)
    except ApiUnreachable as direct_error:
        if not allow_fallback or host is None:
            raise
        fallback = KubectlApi(host)
        try:
            fallback.check()
        except KubeError as fallback_error:
            raise ApiUnreachable(f"{direct_error}; fallback {fallback_error}") from None
        if log:
            log(f"{direct_error}; using {fallback.description}")
        return fallback
