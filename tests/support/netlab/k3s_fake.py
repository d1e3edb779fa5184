#!/usr/bin/python3
"""netlab fake `k3s` binary (served by the lab's download mirror; the mirror bakes VERSION in).

* ``k3s --version`` / ``k3s -v`` / ``k3s version``: ``k3s version <VERSION> (<commit>)``.
* ``k3s server [flags]``: config from /etc/rancher/k3s/config.yaml (+ /etc/rancher/k3s/config.yaml.d/*.yaml) and
  flags (flags win). Runs the Kubernetes API emulator (python -m tests.support.kubeapi serve) on <node-ip>:6443
  with TLS in /var/lib/rancher/k3s/server/tls, forwards 127.0.0.1:6443 to it, writes the admin kubeconfig
  (write-kubeconfig, default /etc/rancher/k3s/k3s.yaml, server https://127.0.0.1:6443, write-kubeconfig-mode),
  the join token /var/lib/rancher/k3s/server/token (+ node-token) as K10<sha256(server CA)>::server:<secret>,
  and notifies systemd (READY=1) once the API answers. The fake controllers re-read their switches from
  /var/lib/rancher/k3s/server/netlab-controller-switches.json (tests write it to provoke faults).
* ``k3s agent [flags]``: server/token/token-file/node-ip/node-name from config.yaml, flags or K3S_URL/K3S_TOKEN/
  K3S_TOKEN_FILE; waits for the server, checks the CA hash of a K10 token, registers its Node (InternalIP =
  node-ip) with the token as Bearer auth; 401 -> exits 1 with a clear error (systemd restarts it).
* ``k3s kubectl ...``: the venv kubectl with KUBECONFIG=/etc/rancher/k3s/k3s.yaml (unless KUBECONFIG is set).

Everything it decided is written to /var/lib/rancher/k3s/netlab-<server|agent>.json for tests.
"""
import hashlib
import ipaddress
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

VERSION = "@@VERSION@@"
COMMIT = "abcdef12"
PROJECT_DIR = "@@PROJECT_DIR@@"
VENV_PY = "@@VENV_PY@@"  # the test run's interpreter (the mirror bakes it in)
KUBECTL = "@@VENV_BIN@@/kubectl"
CONFIG = "/etc/rancher/k3s/config.yaml"
DATA = "/var/lib/rancher/k3s"
#: in the server's data folder: the fake controllers' switches (tests write it to provoke faults)
CONTROLLER_SWITCHES = "netlab-controller-switches.json"
BOOL_FLAGS = {"disable-network-policy", "disable-kube-proxy", "disable-cloud-controller", "disable-helm-controller",
              "cluster-init", "debug", "secrets-encryption", "protect-kernel-defaults", "selinux", "rootless",
              "prefer-bundled-bin", "flannel-ipv6-masq", "embedded-registry", "disable-scheduler",
              "disable-apiserver", "disable-controller-manager", "disable-etcd", "docker", "with-node-id",
              "tls-san-security", "egress-selector-mode-disabled"}
LIST_FLAGS = {"tls-san", "disable", "node-label", "node-taint", "kube-apiserver-arg", "kubelet-arg",
              "kube-controller-manager-arg", "kube-proxy-arg", "node-ip", "node-external-ip", "cluster-cidr",
              "service-cidr"}


def log(msg):
    ts = time.strftime("%Y-%m-%dT%H:%M:%S")
    print(f'time="{ts}" level=info msg="{msg}"', file=sys.stderr, flush=True)


def fatal(msg):
    ts = time.strftime("%Y-%m-%dT%H:%M:%S")
    print(f'time="{ts}" level=fatal msg="{msg}"', file=sys.stderr, flush=True)
    sys.exit(1)


def notify(state):
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.connect(path)
            s.send(state.encode())
        except OSError:
            pass


def load_config(args):
    import yaml
    cfg = {}
    files = [CONFIG] + sorted(
        os.path.join(CONFIG + ".d", f) for f in (os.listdir(CONFIG + ".d") if os.path.isdir(CONFIG + ".d") else [])
        if f.endswith((".yaml", ".yml")))
    for path in files:
        if not os.path.exists(path):
            continue
        try:
            with open(path) as f:
                data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            fatal(f"failed to parse config file {path}: {e}")
        if not isinstance(data, dict):
            fatal(f"failed to parse config file {path}: not a mapping")
        for k, v in data.items():
            k = str(k).lstrip("-")
            if k.endswith("+"):
                k = k[:-1]
                cfg.setdefault(k, [])
            if k in LIST_FLAGS:
                vals = v if isinstance(v, list) else [v]
                cur = cfg.get(k, [])
                cfg[k] = (cur if isinstance(cur, list) else [cur]) + [str(x) for x in vals]
            else:
                cfg[k] = v
    # flags win over the config file
    i = 0
    flags = {}
    while i < len(args):
        a = args[i]
        if not a.startswith("-"):
            fatal(f"unexpected argument {a!r}")
        a = a.lstrip("-")
        if "=" in a:
            k, v = a.split("=", 1)
        elif a in BOOL_FLAGS:
            k, v = a, True
        elif i + 1 < len(args):
            k, v = a, args[i + 1]
            i += 1
        else:
            fatal(f"flag needs an argument: --{a}")
        if k in LIST_FLAGS:
            flags.setdefault(k, []).extend(str(v).split(",") if k in ("tls-san", "disable") else [str(v)])
        else:
            flags[k] = v
        i += 1
    cfg.update(flags)
    for k in ("tls-san", "disable", "node-ip", "cluster-cidr", "service-cidr"):
        if k in cfg:
            vals = cfg[k] if isinstance(cfg[k], list) else [cfg[k]]
            cfg[k] = [p.strip() for v in vals for p in str(v).split(",") if p.strip()]
    return cfg


def eth0_ipv4():
    out = subprocess.run(["ip", "-j", "-4", "addr", "show", "scope", "global"], capture_output=True, text=True).stdout
    addrs = []
    for link in json.loads(out or "[]"):
        addrs += [a["local"] for a in link.get("addr_info", [])]
    return addrs


def read_token(cfg, env_prefix="K3S_"):
    tok = cfg.get("token") or os.environ.get(env_prefix + "TOKEN")
    tf = cfg.get("token-file") or os.environ.get(env_prefix + "TOKEN_FILE")
    if not tok and tf:
        try:
            with open(tf) as f:
                tok = f.read().strip()
        except OSError as e:
            fatal(f"failed to read token file {tf}: {e.strerror}")
    return str(tok).strip() if tok else None


def secret_of(token):
    if token and token.startswith("K10") and "::" in token:
        return token.split("::", 1)[1].split(":", 1)[-1]
    return token


def save(kind, info):
    os.makedirs(DATA, exist_ok=True)
    with open(f"{DATA}/netlab-{kind}.json", "w") as f:
        json.dump(info, f, indent=1, sort_keys=True)


# ------------------------------------------------------------------ server
def forward(listen_host, port, target_host):
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((listen_host, port))
    srv.listen(64)

    def pipe(a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def loop():
        while True:
            c, _ = srv.accept()
            try:
                t = socket.create_connection((target_host, port), 5)
            except OSError:
                c.close()
                continue
            threading.Thread(target=pipe, args=(c, t), daemon=True).start()
            threading.Thread(target=pipe, args=(t, c), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()


def server(args):
    cfg = load_config(args)
    addrs = eth0_ipv4()
    node_ips = cfg.get("node-ip") or addrs[:1]
    if not node_ips:
        fatal("unable to find an IPv4 address for the node (no node-ip and no interface address)")
    node_ip = node_ips[0]
    if node_ip not in addrs:
        fatal(f"node-ip {node_ip} is not an address of this host")
    port = int(cfg.get("https-listen-port", 6443))
    service_cidr = (cfg.get("service-cidr") or ["10.43.0.0/16"])[0]
    cluster_cidr = (cfg.get("cluster-cidr") or ["10.42.0.0/16"])[0]
    for label, cidr in (("cluster-cidr", cluster_cidr), ("service-cidr", service_cidr)):
        try:
            ipaddress.ip_network(cidr)
        except ValueError:
            fatal(f"invalid {label} {cidr}")
    tls_sans = [s for s in cfg.get("tls-san", [])]
    kubeconfig = cfg.get("write-kubeconfig") or "/etc/rancher/k3s/k3s.yaml"
    mode = cfg.get("write-kubeconfig-mode")
    secret = secret_of(read_token(cfg))
    sdir = f"{DATA}/server"
    os.makedirs(sdir, exist_ok=True)
    if not secret:
        sp = f"{sdir}/netlab-secret"
        if os.path.exists(sp):
            secret = open(sp).read().strip()
        else:
            secret = secrets.token_hex(16)
            with open(sp, "w") as f:
                f.write(secret)
            os.chmod(sp, 0o600)
    tokens = [secret]
    agent_tok = secret_of(cfg.get("agent-token") or (open(cfg["agent-token-file"]).read().strip()
                                                      if cfg.get("agent-token-file") else None))
    if agent_tok:
        tokens.append(agent_tok)
    tokfile = f"{sdir}/netlab-accepted-tokens"
    with open(tokfile, "w") as f:
        f.write("\n".join(tokens) + "\n")
    os.chmod(tokfile, 0o600)
    ready = "/run/k3s/netlab-apiserver-ready"
    if os.path.exists(ready):
        os.unlink(ready)
    san_ips = [node_ip, "127.0.0.1"]
    san_dns = ["kubernetes", "kubernetes.default", "kubernetes.default.svc", "localhost", socket.gethostname()]
    for s in tls_sans:
        try:
            ipaddress.ip_address(s)
            san_ips.append(s)
        except ValueError:
            san_dns.append(s)
    try:
        with open(os.path.join(PROJECT_DIR, "tests/support/kubeapi/controllers.py")) as f:
            hook = "k3s_lab" if "def k3s_lab(" in f.read() else "start"
    except OSError:
        hook = "start"
    # Like the real apiserver (bind-address 0.0.0.0), reachable on every address of the VM; the datastore
    # survives restarts like k3s' sqlite database.
    os.makedirs(f"{sdir}/db", exist_ok=True)
    argv = [VENV_PY, "-m", "tests.support.kubeapi", "serve", "--host", "0.0.0.0", "--port", str(port),
            "--state-file", f"{sdir}/db/state.json",
            "--tls-dir", f"{sdir}/tls", "--service-cidr", service_cidr, "--token-file", tokfile,
            "--kubeconfig-out", kubeconfig, "--kubeconfig-server", f"https://127.0.0.1:{port}",
            "--ready-file", ready, "--controllers", f"tests.support.kubeapi.controllers:{hook}"]
    for ip in dict.fromkeys(san_ips):
        argv += ["--san-ip", ip]
    for n in dict.fromkeys(san_dns):
        argv += ["--san-dns", n]
    env = dict(os.environ, PYTHONPATH=PROJECT_DIR, KUBEAPI_FAKE_NODES=f"{socket.gethostname()}={node_ip}",
               KUBEAPI_FAKE_SWITCHES=f"{sdir}/{CONTROLLER_SWITCHES}",
               KUBEAPI_FAKE_DELAYS="/var/lib/netlab/delays.json")  # the lab's benchmark waits, if on
    info = {"version": VERSION, "node_ip": node_ip, "tls_san": tls_sans, "service_cidr": service_cidr,
            "cluster_cidr": cluster_cidr, "flannel_backend": cfg.get("flannel-backend", "vxlan"),
            "disable_network_policy": bool(cfg.get("disable-network-policy", False)),
            "disable": cfg.get("disable", []), "write_kubeconfig_mode": mode, "config": cfg, "argv": argv,
            "controllers": hook}
    save("server", info)
    log(f"Starting k3s {VERSION} ({COMMIT}) [netlab fake: Kubernetes API emulator]")
    child = subprocess.Popen(argv, env=env, cwd=PROJECT_DIR)

    def term(*_):
        child.terminate()
        try:
            child.wait(5)
        except subprocess.TimeoutExpired:
            child.kill()
        sys.exit(0)

    signal.signal(signal.SIGTERM, term)
    signal.signal(signal.SIGINT, term)
    while not os.path.exists(ready):
        if child.poll() is not None:
            fatal(f"apiserver exited: {child.returncode}")
        time.sleep(0.05)
    with open(f"{sdir}/tls/server-ca.crt", "rb") as f:
        ca_hash = hashlib.sha256(f.read()).hexdigest()
    full = f"K10{ca_hash}::server:{secret}"
    for name in ("token", "node-token"):
        p = f"{sdir}/{name}"
        with open(p, "w") as f:
            f.write(full + "\n")
        os.chmod(p, 0o600)
    if mode is not None:
        os.chmod(kubeconfig, int(str(mode), 8))
    log(f"k3s is up and running (https://{node_ip}:{port})")
    notify("READY=1")
    code = child.wait()
    fatal(f"apiserver exited: {code}")


# ------------------------------------------------------------------ agent
def agent(args):
    cfg = load_config(args)
    url = cfg.get("server") or os.environ.get("K3S_URL")
    if not url:
        fatal("--server is required")
    if not url.startswith("https://"):
        fatal(f"server URL must be https: {url}")
    token = read_token(cfg)
    if not token:
        fatal("--token is required")
    name = cfg.get("node-name") or os.environ.get("K3S_NODE_NAME") or socket.gethostname()
    addrs = eth0_ipv4()
    node_ip = (cfg.get("node-ip") or addrs[:1] or [None])[0]
    if node_ip not in addrs:
        fatal(f"node-ip {node_ip} is not an address of this host")
    save("agent", {"version": VERSION, "server": url, "node_ip": node_ip, "node_name": name, "config": cfg})
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    log(f"Starting k3s agent {VERSION} ({COMMIT}) [netlab fake]")
    while True:  # wait for the server, like k3s does
        try:
            with urllib.request.urlopen(url.rstrip("/") + "/cacerts", context=insecure, timeout=5) as r:
                ca = r.read()
            break
        except (urllib.error.URLError, OSError) as e:
            log(f"Waiting to retrieve agent configuration; server is not ready: {e}")
            time.sleep(2)
    if token.startswith("K10") and "::" in token:
        want = token[3:].split("::", 1)[0]
        if hashlib.sha256(ca).hexdigest() != want:
            fatal(f"Failed to validate connection to cluster at {url}: token CA hash does not match the Cluster CA "
                  f"certificate hash")
    ctx = ssl.create_default_context(cadata=ca.decode())
    ctx.check_hostname = False  # k3s agents connect by IP; the SAN check is done by the IP below
    hdr = {"Authorization": f"Bearer {secret_of(token)}", "Content-Type": "application/json"}

    def call(method, path, body=None):
        req = urllib.request.Request(url.rstrip("/") + path, method=method, headers=hdr,
                                     data=json.dumps(body).encode() if body is not None else None)
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return json.loads(r.read() or b"{}")

    node = {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                                  "kubernetes.io/arch": "amd64"},
                         "annotations": {"k3s.io/internal-ip": node_ip, "k3s.io/node-args": json.dumps(
                             ["agent"] + args)}},
            "spec": {}}
    status = {"addresses": [{"type": "InternalIP", "address": node_ip}, {"type": "Hostname", "address": name}],
              "nodeInfo": {"kubeletVersion": VERSION, "kubeProxyVersion": VERSION, "operatingSystem": "linux",
                           "architecture": "amd64", "containerRuntimeVersion": "containerd://2.0.5-k3s1",
                           "osImage": "Ubuntu 24.04.3 LTS"},
              "conditions": [{"type": "Ready", "status": "False", "reason": "KubeletNotReady",
                              "message": "container runtime network not ready: NetworkReady=false "
                                         "reason:NetworkPluginNotReady message:Network plugin returns error: cni "
                                         "plugin not initialized",
                              "lastHeartbeatTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}]}
    registered = False
    while True:
        try:
            try:
                cur = call("GET", f"/api/v1/nodes/{name}")
            except urllib.error.HTTPError as e:
                if e.code != 404:
                    raise
                call("POST", "/api/v1/nodes", dict(node, status=status))
                cur = {}
                log(f"Node {name} registered with InternalIP {node_ip}")
            try:
                # like the kubelet's periodic node status update: a status written over by another
                # controller at registration time (a race) gets its addresses back on the next pass
                cur = cur or call("GET", f"/api/v1/nodes/{name}")
                if not (cur.get("status") or {}).get("addresses"):
                    merged = dict(status)
                    merged.update(cur.get("status") or {})
                    merged["addresses"] = status["addresses"]
                    call("PUT", f"/api/v1/nodes/{name}/status", dict(cur, status=merged))
            except urllib.error.HTTPError:
                pass
            if not registered:
                registered = True
                with open(f"{DATA}/agent-registered", "w") as f:
                    f.write(f"{name} {node_ip}\n")
                notify("READY=1")
        except urllib.error.HTTPError as e:
            if e.code == 401:
                fatal(f"Failed to validate connection to cluster at {url}: https://{url.split('://', 1)[1]}"
                      f"/api/v1/nodes: 401 Unauthorized")
            log(f"node registration failed: HTTP {e.code}")
        except (urllib.error.URLError, OSError) as e:
            log(f"Failed to connect to proxy: {e}")
        time.sleep(5)


def main(argv):
    if not argv or argv[0] in ("-h", "--help", "help"):
        print("NAME:\n   k3s - Kubernetes, but small and simple (netlab fake)\n\nCOMMANDS:\n   server, agent, kubectl")
        return 0
    cmd = argv[0]
    if cmd in ("--version", "-v", "version"):
        print(f"k3s version {VERSION} ({COMMIT})\ngo version go1.24.4")
        return 0
    if cmd == "server":
        return server(argv[1:])
    if cmd == "agent":
        return agent(argv[1:])
    if cmd == "kubectl":
        env = dict(os.environ)
        env.setdefault("KUBECONFIG", "/etc/rancher/k3s/k3s.yaml")
        os.execve(KUBECTL, [KUBECTL] + argv[1:], env)
    if cmd in ("crictl", "ctr"):
        print(f"netlab fake k3s: {cmd} is not emulated", file=sys.stderr)
        return 1
    print(f"Incorrect Usage: unknown command {cmd!r}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.path.insert(0, PROJECT_DIR)
    sys.exit(main(sys.argv[1:]))
