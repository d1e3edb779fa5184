"""The HTTP(S) front end: discovery, OpenAPI stubs, REST verbs, watch, mTLS, kubeconfig."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import ssl
import tempfile
import queue
import threading
from pathlib import Path

import yaml
from aiohttp import web

from .errors import ApiError, bad_request
from .merge import clone, merge_patch, strategic_merge
from .store import Store
from .table import table

log = logging.getLogger(__name__)
_PATCH_TYPES = {"application/merge-patch+json": "merge", "application/json-patch+json": "json",
                "application/strategic-merge-patch+json": "strategic", "application/apply-patch+yaml": "apply",
                "application/apply-patch+cbor": "apply"}


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """YAML as the API server reads it: timestamps stay strings."""


_Loader.yaml_implicit_resolvers = {k: [r for r in v if r[0] != "tag:yaml.org,2002:timestamp"]
                                   for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}

_SCALABLE = ("Deployment", "ReplicaSet", "StatefulSet")


def _json(obj, status=200) -> web.Response:
    return web.Response(body=json.dumps(obj).encode(), status=status, content_type="application/json")


class Emulator:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, tls: bool = True,
                 san_ips=("127.0.0.1",), san_dns=("kubernetes", "kubernetes.default", "localhost"),
                 service_cidr: str = "198.19.32.0/20", tokens=None, tls_dir: str | os.PathLike | None = None,
                 version: str = "v1.34.2+k3s1", crd_established_delay: float | None = 0.0,
                 namespace_delete_delay: float = 0.2, state_file: str | os.PathLike | None = None):
        self.host, self._port, self.tls = host, port, tls
        self.tokens = set(tokens or ())
        self.version = version
        self.store = Store(service_cidr, crd_established_delay, namespace_delete_delay)
        self.pki = None
        if tls:
            from .tls import PKI
            self._tmp = None if tls_dir else tempfile.TemporaryDirectory(prefix="kubeapi-tls-")
            self.pki = PKI(tls_dir or self._tmp.name, list(san_ips), list(san_dns))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._watches: set[asyncio.Queue] = set()
        self._watchers: list = []
        self.state_file = Path(state_file) if state_file else None
        self._saved_rv = -1
        self._saver_stop = threading.Event()
        if self.state_file and self.state_file.exists():
            self.store.restore(json.loads(self.state_file.read_text()))
            self._saved_rv = self.store.rv

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self, timeout: float = 15.0) -> "Emulator":
        self._thread = threading.Thread(target=self._run, name=f"kubeapi-{id(self):x}", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("kube API emulator did not start")
        if self._error:
            raise self._error
        if self.state_file:
            threading.Thread(target=self._saver, name="kubeapi-state", daemon=True).start()
        return self

    def save_state(self) -> None:
        """Write the store to state_file (atomically); done every 0.5 s when something changed and at stop."""
        if not self.state_file:
            return
        data = self.store.snapshot()
        if data["resourceVersion"] == self._saved_rv:
            return
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.state_file)
        self._saved_rv = data["resourceVersion"]

    def _saver(self) -> None:
        while not self._saver_stop.wait(0.5):
            try:
                self.save_state()
            except OSError:
                log.exception("kubeapi: saving the state failed")

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._astart())
        except BaseException as e:  # noqa: BLE001 - reported to start()
            self._error = e
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(self._astop())
        loop.close()

    async def _astart(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        ctx = None
        if self.tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(self.pki.serving_cert, self.pki.serving_key)
            ctx.load_verify_locations(cadata=self.pki.client_ca_pem.decode())
            ctx.verify_mode = ssl.CERT_OPTIONAL
        site = web.TCPSite(self._runner, self.host, self._port, ssl_context=ctx)
        await site.start()
        self._port = site._server.sockets[0].getsockname()[1]

    async def _astop(self) -> None:
        for q in list(self._watches):
            q.put_nowait(None)
        await asyncio.sleep(0)
        await self._runner.cleanup()

    def stop(self) -> None:
        for unsubscribe in self._watchers:
            unsubscribe()
        self._watchers.clear()
        self.store.stop_timers()
        self._saver_stop.set()
        if self._thread is not None:
            self.save_state()
        if self._loop and self._thread and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ---- client configuration -----------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", None) else self.host
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{host}:{self._port}"

    def kubeconfig(self, server: str | None = None) -> str:
        cluster = {"server": server or self.url}
        user: dict = {}
        if self.tls:
            b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
            cluster["certificate-authority-data"] = b64(self.pki.server_ca_pem)
            user = {"client-certificate-data": b64(self.pki.admin_cert.read_bytes()),
                    "client-key-data": b64(self.pki.admin_key.read_bytes())}
        cfg = {"apiVersion": "v1", "clusters": [{"cluster": cluster, "name": "default"}],
               "contexts": [{"context": {"cluster": "default", "user": "default"}, "name": "default"}],
               "current-context": "default", "kind": "Config", "preferences": {},
               "users": [{"name": "default", "user": user}]}
        return yaml.safe_dump(cfg, sort_keys=False)

    def write_kubeconfig(self, path, server: str | None = None) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.kubeconfig(server))
        os.chmod(path, 0o600)
        return path

    def on_stop(self, fn) -> None:
        """Call fn() when the emulator stops (before the server shuts down), e.g. to stop controller threads."""
        self._watchers.append(fn)

    def add_watcher(self, callback, api_version: str | None = None, kind: str | None = None):
        """callback(event_type, obj) for every change (of one kind if given), called on a private thread so it
        may use the store. Returns an unsubscribe function."""
        q: queue.Queue = queue.Queue()
        res = self.store.res(api_version, kind) if kind else None
        unsub = self.store.subscribe(lambda t, o: q.put((t, clone(o))), res=res)

        def pump():
            while (item := q.get()) is not None:
                try:
                    callback(*item)
                except Exception:  # noqa: BLE001
                    log.exception("kubeapi watcher callback failed")

        threading.Thread(target=pump, daemon=True, name="kubeapi-watcher").start()

        def stop():
            unsub()
            q.put(None)
        self._watchers.append(stop)
        return stop

    # ---- HTTP ---------------------------------------------------------------------------------
    def _authorized(self, request: web.Request) -> bool:
        if not self.tls:
            return True
        tr = request.transport
        if tr is not None and tr.get_extra_info("peercert"):
            return True
        auth = request.headers.get("Authorization", "")
        return auth.startswith("Bearer ") and auth[7:].strip() in self.tokens

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path in ("/cacerts", "/ping") and self.tls:
            return web.Response(text=self.pki.server_ca_pem.decode() if path == "/cacerts" else "pong")
        if not self._authorized(request):
            return _json(ApiError(401, "Unauthorized", "Unauthorized").status(), 401)
        try:
            return await self._route(request, [p for p in path.split("/") if p])
        except ApiError as e:
            return _json(e.status(), e.code)
        except Exception as e:  # noqa: BLE001
            log.exception("kubeapi emulator error")
            return _json(ApiError(500, "InternalError", f"emulator error: {e!r}").status(), 500)

    async def _route(self, request, parts):
        if parts in (["version"],):
            major, minor = self.version.lstrip("v").split(".")[:2]
            return _json({"major": major, "minor": minor, "emulationMajor": major, "emulationMinor": minor,
                          "gitVersion": self.version, "gitCommit": "0" * 40, "gitTreeState": "clean",
                          "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24.0", "compiler": "gc",
                          "platform": "linux/amd64"})
        if parts and parts[0] in ("healthz", "livez", "readyz"):
            return web.Response(text="ok")
        if parts and parts[0] == "openapi":
            return self._openapi(request, parts[1:])
        if not parts or parts[0] not in ("api", "apis"):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        groups = self.store.groups()
        if parts[0] == "api":
            if len(parts) == 1:
                return _json({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.host}:{self._port}"}]})
            group, version, rest = "", parts[1], parts[2:]
        else:
            if len(parts) == 1:
                return _json({"kind": "APIGroupList", "apiVersion": "v1",
                              "groups": [self._group_doc(g, v) for g, v in groups.items() if g]})
            group = parts[1]
            if group not in groups:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            if len(parts) == 2:
                return _json(dict(self._group_doc(group, groups[group]), kind="APIGroup", apiVersion="v1"))
            version, rest = parts[2], parts[3:]
        if version not in groups.get(group, []):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if not rest:
            gv = f"{group}/{version}" if group else version
            return _json({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
                          "resources": [d for r in self.store.group_resources(group, version)
                                        for d in r.discovery()]})
        ns = None
        if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] not in ("status", "finalize"):
            ns, rest = rest[1], rest[2:]
        if len(rest) > 3:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        res = self.store.resource(group, version, rest[0])
        if res is None or (ns is not None and not res.namespaced):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub is not None and not (sub == "status" and res.status or sub == "scale" and res.kind in _SCALABLE):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return await self._verb(request, res, ns, name, sub)

    @staticmethod
    def _group_doc(group, versions):
        vs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"name": group, "versions": vs, "preferredVersion": vs[0]}

    async def _body(self, request):
        if "protobuf" in request.content_type or "cbor" in request.content_type:
            raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - "
                           f"accepted media types include: application/json, application/yaml (the emulator does "
                           f"not speak {request.content_type})")
        raw = await request.read()
        try:
            return json.loads(raw)
        except ValueError:
            try:
                return yaml.load(raw, Loader=_Loader)
            except yaml.YAMLError as e:
                raise bad_request(f"unable to decode request body: {e}")

    async def _verb(self, request, res, ns, name, sub):
        q, st, m = request.query, self.store, request.method
        dry = q.get("dryRun") == "All"
        manager = q.get("fieldManager") or request.headers.get("User-Agent", "unknown").split("/")[0].split(" ")[0]
        if res.namespaced and ns is None and name is not None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        as_table = "as=Table" in request.headers.get("Accept", "")
        if m == "GET" and name is None:
            if q.get("watch") in ("1", "true", "True"):
                return await self._watch(request, res, ns)
            items, rv = st.list_objs(res, ns, q.get("labelSelector"), q.get("fieldSelector"))
            if as_table:
                return _json(table(res, items, rv, q.get("includeObject", "Metadata")))
            return _json({"kind": f"{res.kind}List", "apiVersion": res.api_version,
                          "metadata": {"resourceVersion": rv}, "items": items})
        if sub == "scale":
            return await self._scale(request, res, ns, name, dry, manager)
        if m == "GET":
            obj = st.get_obj(res, ns, name)
            if as_table:
                return _json(table(res, [obj], obj["metadata"]["resourceVersion"], q.get("includeObject", "Metadata")))
            return _json(obj)
        if m == "POST" and name is None:
            body = await self._body(request)
            if not isinstance(body, dict):
                raise bad_request("request body must be an object")
            return _json(st.create(res, ns, body, dry_run=dry, manager=manager), 201)
        if m == "PUT" and name:
            body = await self._body(request)
            if not isinstance(body, dict):
                raise bad_request("request body must be an object")
            return _json(st.replace(res, ns, name, body, subresource=sub, dry_run=dry, manager=manager))
        if m == "PATCH" and name:
            ctype = request.content_type
            ptype = _PATCH_TYPES.get(ctype)
            if ptype is None:
                raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - "
                               f"accepted media types include: {', '.join(_PATCH_TYPES)}")
            body = await self._body(request)
            existed = ptype == "apply" and st.get_obj_or_none(res, ns, name) is not None
            out = st.patch(res, ns, name, body, ptype, subresource=sub, dry_run=dry,
                           manager=q.get("fieldManager") if ptype == "apply" else manager,
                           force=q.get("force") in ("true", "1", "True"))
            return _json(out, 201 if ptype == "apply" and not existed else 200)
        if m == "DELETE":
            if name is None:
                items, _ = st.list_objs(res, ns, q.get("labelSelector"), q.get("fieldSelector"))
                for it in items:
                    st.delete(res, it["metadata"].get("namespace"), it["metadata"]["name"], dry_run=dry)
                return _json({"kind": f"{res.kind}List", "apiVersion": res.api_version,
                              "metadata": {"resourceVersion": str(st.rv)}, "items": items})
            raw = await request.read()
            if raw:
                try:
                    dry = dry or "All" in (json.loads(raw).get("dryRun") or [])
                except (ValueError, AttributeError):
                    pass
            return _json(st.delete(res, ns, name, dry_run=dry))
        raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")

    async def _scale(self, request, res, ns, name, dry, manager):
        """autoscaling/v1 Scale view of spec.replicas."""
        st = self.store

        def view(o):
            md = o["metadata"]
            sel = ",".join(f"{k}={v}" for k, v in (((o.get("spec") or {}).get("selector") or {})
                                                   .get("matchLabels") or {}).items())
            return {"kind": "Scale", "apiVersion": "autoscaling/v1",
                    "metadata": {k: md[k] for k in ("name", "namespace", "uid", "resourceVersion",
                                                    "creationTimestamp") if k in md},
                    "spec": {"replicas": (o.get("spec") or {}).get("replicas", 1)},
                    "status": {"replicas": (o.get("status") or {}).get("replicas", 0), "selector": sel}}
        cur = st.get_obj(res, ns, name)
        if request.method == "GET":
            return _json(view(cur))
        body = await self._body(request)
        if request.method == "PUT":
            new = body
        elif request.method == "PATCH" and request.content_type in ("application/merge-patch+json",
                                                                    "application/strategic-merge-patch+json"):
            new = (merge_patch if "merge-patch" in request.content_type else strategic_merge)(view(cur), body)
        else:
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        replicas = (new.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or replicas < 0:
            raise ApiError(422, "Invalid", f"Scale.autoscaling \"{name}\" is invalid: spec.replicas: Invalid value")
        out = st.patch(res, ns, name, {"spec": {"replicas": replicas}}, "merge", dry_run=dry, manager=manager)
        return _json(view(out))

    async def _watch(self, request, res, ns):
        q = request.query
        loop = asyncio.get_running_loop()
        evq: asyncio.Queue = asyncio.Queue()
        timeout = float(q.get("timeoutSeconds") or 1800)
        initial = q.get("sendInitialEvents") == "true"
        rv = q.get("resourceVersion")
        as_table = "as=Table" in request.headers.get("Accept", "")
        first = [True]

        def deliver(t, obj):
            obj = dict(obj, apiVersion=res.api_version, kind=res.kind)
            if as_table:
                obj = table(res, [obj], obj["metadata"].get("resourceVersion", ""), q.get("includeObject", "Metadata"))
                if not first[0]:
                    obj.pop("columnDefinitions")
                first[0] = False
            try:
                loop.call_soon_threadsafe(evq.put_nowait, {"type": t, "object": obj})
            except RuntimeError:
                pass

        try:
            unsub = self.store.subscribe(deliver, res, ns, q.get("labelSelector"), q.get("fieldSelector"),
                                         since=rv, initial=initial or rv in (None, "", "0"))
        except ApiError as e:
            if e.code != 410:
                raise
            unsub = None
            evq.put_nowait({"type": "ERROR", "object": e.status()})
            evq.put_nowait(None)
        if initial:
            evq.put_nowait({"type": "BOOKMARK", "object": {
                "kind": res.kind, "apiVersion": res.api_version,
                "metadata": {"resourceVersion": str(self.store.rv),
                             "annotations": {"k8s.io/initial-events-end": "true"}}}})
        resp = web.StreamResponse(headers={"Content-Type": "application/json", "Cache-Control": "no-cache"})
        resp.enable_chunked_encoding()
        self._watches.add(evq)
        try:
            await resp.prepare(request)
            deadline = loop.time() + timeout
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    ev = await asyncio.wait_for(evq.get(), remaining)
                except asyncio.TimeoutError:
                    break
                if ev is None:
                    break
                await resp.write(json.dumps(ev).encode() + b"\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._watches.discard(evq)
            if unsub:
                unsub()
        try:
            await resp.write_eof()
        except (ConnectionResetError, RuntimeError):
            pass
        return resp

    # ---- OpenAPI (just enough for kubectl's fieldValidation check) ---------------------------
    def _openapi(self, request, parts):
        groups = self.store.groups()
        gvs = [("", "v1")] + [(g, v) for g, vs in groups.items() if g for v in vs]
        if parts == ["v3"]:
            paths = {}
            for g, v in gvs:
                key = f"apis/{g}/{v}" if g else "api/v1"
                h = hashlib.sha256(repr(self.store.group_resources(g, v)).encode()).hexdigest()[:16].upper()
                paths[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={h}"}
            return _json({"paths": paths})
        if len(parts) >= 3 and parts[0] == "v3":
            g, v = ("", parts[2]) if parts[1] == "api" else (parts[2], parts[3] if len(parts) > 3 else "")
            if v not in groups.get(g, []):
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            paths = {}
            param = [{"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": True}},
                     {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
                     {"name": "fieldManager", "in": "query", "schema": {"type": "string"}}]
            for r in self.store.group_resources(g, v):
                base = f"/apis/{g}/{v}" if g else "/api/v1"
                p = f"{base}/namespaces/{{namespace}}/{r.plural}/{{name}}" if r.namespaced \
                    else f"{base}/{r.plural}/{{name}}"
                gvk = {"group": g, "version": v, "kind": r.kind}
                op = {"x-kubernetes-group-version-kind": gvk, "parameters": param,
                      "responses": {"200": {"description": "OK"}}}
                paths[p] = {"get": dict(op, parameters=[]), "patch": dict(op, operationId=f"patch{r.kind}"),
                            "put": dict(op, operationId=f"replace{r.kind}")}
            return _json({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": self.version},
                          "paths": paths, "components": {"schemas": {}}})
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
