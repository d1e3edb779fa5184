"""A lab of "VMs" built from Linux namespaces, driven like Multipass instances.

Every VM is a network + mount + UTS + IPC + PID namespace set (namespaces(7)):

* its own network namespace ``<prefix>-<name>`` with ``eth0`` (a veth whose peer sits on the bridge ``br0`` inside
  the switch namespace ``<prefix>-sw``) carrying the simulated "Multipass DHCP" address 203.0.113.(10+i)/24;
* its own root file system: an overlayfs with ``lowerdir=/`` and a per-VM upper directory under the lab's workdir
  (survives stop/start, like a VM disk), with its own /etc/hosts, /etc/resolv.conf (nameserver 127.0.0.1), the user
  ``ubuntu`` (uid 1000), and the in-VM stand-ins (systemctl, cloud-init, sudo, ...) in /usr/local;
* an init process (PID 1 of the VM) that only reaps orphans; SIGKILL on it stops the VM.

Nothing is created in the machine's own network namespace: the bridge lives in ``<prefix>-sw`` and veths are created
directly inside the namespaces. The workstation namespace ``<prefix>-ws`` (203.0.113.1/24) is where tests run the
product (pyinfra) and the ``multipass`` double.

The lab state is a JSON file (``<workdir>/state.json``) guarded by ``fcntl.flock`` on ``<workdir>/state.lock``, so
the ``multipass`` double (another process) can create, start, stop and delete VMs at any time.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
PROJECT_DIR = HERE.parents[2]  # the checkout
VM_FILES = HERE / "vm"

DHCP_NET = "203.0.113"
DHCP_PREFIX = 24
WS_ADDR = f"{DHCP_NET}.1"
VM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/snap/bin"
SYS_PYTHON = "/usr/bin/python3"
UBUNTU_UID = 1000

STATE_ENV = "CALICOLAB_NETLAB_STATE"

#: Realistic waits for benchmarks (seconds), off unless a lab is given them with :meth:`NetLab.set_delays`:
#: ``launch`` per ``multipass launch`` (the double), ``apt`` per cloud-init package step (the VM's cloud-init
#: stand-in), ``download`` per binary the mirror serves (k3s, kubectl, calicoctl; not scripts or checksums),
#: ``pod_start`` per Deployment rollout and ``calico_available`` for TigeraStatus (the fake cluster's controllers).
REALISTIC_DELAYS = {"launch": 30.0, "apt": 10.0, "download": 5.0, "pod_start": 5.0, "calico_available": 15.0}
#: where a VM finds the lab's delays (inside the VM's own root; the product never reads it)
VM_DELAYS_PATH = "/var/lib/netlab/delays.json"

# The init of a VM: PID 1 inside its pid namespace. It reaps orphans (daemons started by the fake systemctl are
# re-parented to it) and otherwise sleeps; it ignores SIGTERM like any pid-namespace init, SIGKILL stops the VM.
_INIT_PY = (
    "import os,time\n"
    "while True:\n"
    "    try:\n"
    "        os.wait()\n"
    "    except ChildProcessError:\n"
    "        time.sleep(1)\n"
)

# Runs as PID 1 of the new pid namespace, in a new private mount namespace, inside the VM's network namespace.
_SETUP_SH = r"""
set -e
M="$1"; U="$2"; W="$3"; PROJ="$4"; HOST="$5"; PY="$6"
mount -t overlay overlay -o "lowerdir=/,upperdir=$U,workdir=$W" "$M"
mount --rbind /dev "$M/dev"
mount -t sysfs sysfs "$M/sys"
mount -t tmpfs -o mode=755 tmpfs "$M/run"
mount -t tmpfs -o mode=1777 tmpfs "$M/tmp"
mount -t proc proc "$M/proc"
mkdir -p "$M$PROJ"
mount --bind "$PROJ" "$M$PROJ"
mount -o remount,bind,ro "$M$PROJ"
hostname "$HOST"
cd "$M"
exec chroot "$M" "$PY" -c "$7"
"""


class LabError(RuntimeError):
    pass


def _run(argv, check=True, **kw):
    proc = subprocess.run(argv, capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(map(str, argv))} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


def _ns_inode(pid: int | str, kind: str) -> int:
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


class NetLab:
    """One lab. ``NetLab(prefix, workdir).setup()`` builds the switch and workstation namespaces; VMs are created on
    demand with :meth:`create_vm` (the ``multipass launch`` double does that). :meth:`attach` re-opens a lab from
    its state file in another process."""

    def __init__(self, prefix: str, workdir: os.PathLike | str, project_dir: os.PathLike | str = PROJECT_DIR):
        if not prefix or len(prefix) > 8 or not prefix.replace("-", "").isalnum():
            raise ValueError("prefix must be 1-8 alphanumeric characters")
        self.prefix = prefix
        self.workdir = pathlib.Path(workdir).resolve()
        self.project_dir = pathlib.Path(project_dir).resolve()
        self.state_path = self.workdir / "state.json"
        self.lock_path = self.workdir / "state.lock"
        self.sw = f"{prefix}-sw"
        self.ws = f"{prefix}-ws"
        self._children: list[subprocess.Popen] = []

    # ------------------------------------------------------------------ state
    @classmethod
    def attach(cls, state_path: os.PathLike | str | None = None) -> "NetLab":
        state_path = pathlib.Path(state_path or os.environ[STATE_ENV])
        data = json.loads(state_path.read_text())
        lab = cls(data["prefix"], data["workdir"], data["project_dir"])
        return lab

    @contextlib.contextmanager
    def locked(self):
        """Exclusive lock; yields the state dict and writes it back on success."""
        with open(self.lock_path, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                state = json.loads(self.state_path.read_text())
                yield state
                tmp = self.state_path.with_suffix(".tmp")
                tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
                os.replace(tmp, self.state_path)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def state(self) -> dict:
        with open(self.lock_path, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_SH)
            try:
                return json.loads(self.state_path.read_text())
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def vm(self, name: str) -> dict | None:
        return self.state()["vms"].get(name)

    def vm_names(self) -> list[str]:
        return list(self.state()["vms"])

    @property
    def faults_path(self) -> pathlib.Path:
        return self.workdir / "faults.json"

    def set_faults(self, faults: dict) -> None:
        """Injected failures/delays for the multipass double, e.g.
        ``{"fail": {"launch:node2": "launch failed: ..."}, "delay": {"launch": 1.5}, "daemon_down": True}``."""
        self.faults_path.write_text(json.dumps(faults))

    @property
    def delays_path(self) -> pathlib.Path:
        return self.workdir / "delays.json"

    def delays(self) -> dict:
        """The injected waits in force (see REALISTIC_DELAYS); {} when off (the default)."""
        try:
            return json.loads(self.delays_path.read_text())
        except (OSError, ValueError):
            return {}

    def set_delays(self, delays: dict) -> None:
        """Turn injected waits on (``lab.set_delays(REALISTIC_DELAYS)``) or off (``{}``), also in running VMs;
        VMs created later get them at creation."""
        unknown = set(delays) - set(REALISTIC_DELAYS)
        if unknown:
            raise ValueError(f"unknown delays {sorted(unknown)}; known: {sorted(REALISTIC_DELAYS)}")
        self.delays_path.write_text(json.dumps(delays))
        for name in self.vm_names():
            self._write_vm_delays(name, delays)

    def _write_vm_delays(self, name: str, delays: dict) -> None:
        text = json.dumps(delays)
        if self.running(name):  # through the VM's mounts: writing under a mounted overlay is undefined
            r = self.exec_in(name, ["sh", "-c", f"mkdir -p {VM_DELAYS_PATH.rsplit('/', 1)[0]} && "
                                                f"cat > {VM_DELAYS_PATH}.new && mv {VM_DELAYS_PATH}.new {VM_DELAYS_PATH}"],
                             input=text)
            if r.returncode:
                raise LabError(f"delays into {name}: {r.stderr.strip()}")
        elif self._vm_dir(name).is_dir():
            path = self._vm_dir(name) / "upper" / VM_DELAYS_PATH.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)

    # ------------------------------------------------------------------ lab up/down
    @property
    def bin_dir(self) -> pathlib.Path:
        """Holds the ``multipass`` launcher: the double run by this test run's interpreter."""
        return self.workdir / "bin"

    def setup(self) -> "NetLab":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.bin_dir.mkdir(exist_ok=True)
        launcher = self.bin_dir / "multipass"
        launcher.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(HERE / 'multipass'))} \"$@\"\n")
        launcher.chmod(0o755)
        (self.workdir / "vms").mkdir(exist_ok=True)
        existing = _run(["ip", "netns", "list"]).stdout
        for ns in (self.sw, self.ws):
            if ns in existing.split():
                raise LabError(f"namespace {ns} already exists")
        self.state_path.write_text(json.dumps({
            "prefix": self.prefix,
            "workdir": str(self.workdir),
            "project_dir": str(self.project_dir),
            "anchor_pid": os.getpid(),
            "anchor_mnt": _ns_inode("self", "mnt"),
            "next_index": 0,
            "vms": {},
            "pids": [],
        }, indent=1))
        self.lock_path.touch()
        _run(["ip", "netns", "add", self.sw])
        _run(["ip", "-n", self.sw, "link", "add", "br0", "type", "bridge"])
        _run(["ip", "-n", self.sw, "link", "set", "br0", "up"])
        _run(["ip", "-n", self.sw, "link", "set", "lo", "up"])
        _run(["ip", "netns", "add", self.ws])
        self._disable_ipv6(self.ws)
        _run(["ip", "link", "add", "eth0", "netns", self.ws, "type", "veth", "peer", "name", "ws", "netns", self.sw])
        _run(["ip", "-n", self.sw, "link", "set", "ws", "master", "br0", "up"])
        _run(["ip", "-n", self.ws, "link", "set", "lo", "up"])
        _run(["ip", "-n", self.ws, "addr", "add", f"{WS_ADDR}/{DHCP_PREFIX}", "dev", "eth0"])
        _run(["ip", "-n", self.ws, "link", "set", "eth0", "up"])
        _run(["ip", "netns", "exec", self.ws, "sh", "-c", "echo 0 > /proc/sys/net/ipv4/ip_forward"], check=False)
        return self

    def _disable_ipv6(self, ns: str) -> None:
        _run(["ip", "netns", "exec", ns, "sh", "-c",
              "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; "
              "echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6"], check=False)

    def in_anchor_mount_ns(self) -> bool:
        """True when this process sees the same mount namespace as the process that built the lab (``ip netns
        add`` and VM overlays must be made there, not inside an ``ip netns exec`` private mount namespace)."""
        return _ns_inode("self", "mnt") == self.state()["anchor_mnt"]

    def anchor_pid(self) -> int:
        st = self.state()
        for pid in (st["anchor_pid"], 1):
            try:
                if _ns_inode(pid, "mnt") == st["anchor_mnt"]:
                    return pid
            except (FileNotFoundError, PermissionError):
                continue
        raise LabError("no process left in the lab's mount namespace")

    def teardown(self) -> list[str]:
        """Kill every VM (SIGKILL on its init), stop started helpers, delete all namespaces. Returns problems."""
        problems = []
        try:
            st = self.state()
        except FileNotFoundError:
            st = {"vms": {}, "pids": []}
        for name, vm in st["vms"].items():
            self._kill_init(vm)
        for pid in st.get("pids", []):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for p in self._children:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            with contextlib.suppress(Exception):
                p.wait(timeout=5)
        self._reap(st)
        for name, vm in st["vms"].items():
            if vm.get("netns"):
                _run(["ip", "netns", "del", vm["netns"]], check=False)
        for ns in (self.ws, self.sw):
            _run(["ip", "netns", "del", ns], check=False)
        left = set(_run(["ip", "netns", "list"]).stdout.split())
        for ns in [self.ws, self.sw] + [vm.get("netns") for vm in st["vms"].values()]:
            if ns in left:
                problems.append(f"namespace {ns} still present")
        return problems

    def _reap(self, st) -> None:
        pids = [vm.get("holder_pid") for vm in st["vms"].values()] + st.get("pids", [])
        deadline = time.time() + 5
        for pid in filter(None, pids):
            while time.time() < deadline:
                try:
                    done, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    break
                if done:
                    break
                time.sleep(0.02)

    # ------------------------------------------------------------------ VMs
    def _vm_dir(self, name: str) -> pathlib.Path:
        return self.workdir / "vms" / name

    def reserve_vm(self, name: str, **info) -> dict:
        """Register a VM in state ``Starting``; raises LabError("exists") if the name is taken."""
        with self.locked() as st:
            if name in st["vms"]:
                raise LabError("exists")
            idx = st["next_index"]
            st["next_index"] = idx + 1
            if idx > 200:
                raise LabError("no free DHCP address")
            vm = {
                "name": name,
                "index": idx,
                "netns": f"{self.prefix}-{name}"[:32] if len(name) < 20 else f"{self.prefix}-vm{idx}",
                "peer": f"v{idx}",
                "dhcp_ip": f"{DHCP_NET}.{10 + idx}",
                "state": "Starting",
                "init_pid": None,
                "holder_pid": None,
                "created": time.time(),
                **info,
            }
            st["vms"][name] = vm
            return vm

    def trust_ca(self, ca_file: os.PathLike | str) -> None:
        """VMs created from now on trust this CA too (appended to their system CA bundle)."""
        with self.locked() as st:
            st["trusted_ca"] = str(ca_file)

    def update_vm(self, name: str, **changes) -> dict:
        with self.locked() as st:
            st["vms"][name].update(changes)
            return st["vms"][name]

    def forget_vm(self, name: str) -> None:
        with self.locked() as st:
            st["vms"].pop(name, None)

    def create_vm(self, name: str, user_data: str | None = None, boot: bool = True, **info) -> dict:
        """Create and start a VM (network, overlay, user ubuntu, stand-ins), optionally with cloud-init user-data
        (stored as /var/lib/cloud/instance/user-data.txt and applied by the first boot)."""
        vm = self.reserve_vm(name, **info)
        try:
            self._create_network(vm)
            self._prepare_rootfs(vm, user_data)
            self.start_vm(name, boot=boot)
        except Exception:
            self.update_vm(name, state="Unknown")
            raise
        return self.vm(name)

    def _create_network(self, vm: dict) -> None:
        ns, peer = vm["netns"], vm["peer"]
        _run(["ip", "netns", "add", ns])
        self._disable_ipv6(ns)
        _run(["ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", peer, "netns", self.sw])
        _run(["ip", "-n", self.sw, "link", "set", peer, "master", "br0", "up"])
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])

    def _prepare_rootfs(self, vm: dict, user_data: str | None) -> None:
        d = self._vm_dir(vm["name"])
        up = d / "upper"
        for sub in ("upper", "work", "merged"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        etc = up / "etc"
        etc.mkdir(exist_ok=True)
        (etc / "hostname").write_text(vm["name"] + "\n")
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        trusted = self.state().get("trusted_ca")
        if trusted:
            bundle = pathlib.Path("/etc/ssl/certs/ca-certificates.crt")
            (etc / "ssl" / "certs").mkdir(parents=True, exist_ok=True)
            (etc / "ssl" / "certs" / "ca-certificates.crt").write_bytes(
                (bundle.read_bytes() if bundle.exists() else b"") + pathlib.Path(trusted).read_bytes())
        (etc / "hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {vm['name']}\n")
        # user ubuntu (uid/gid 1000) replacing whatever owns 1000 on the machine
        for fname, line in (("passwd", "ubuntu:x:1000:1000:Ubuntu:/home/ubuntu:/bin/bash\n"),
                            ("group", "ubuntu:x:1000:\n")):
            kept = [ln for ln in pathlib.Path("/etc", fname).read_text().splitlines(True)
                    if ln.split(":")[0] != "ubuntu" and (ln.split(":") + ["", "", ""])[2] != "1000"]
            if fname == "group":
                kept = [self._add_member(ln, ("sudo", "adm")) for ln in kept]
            (etc / fname).write_text("".join(kept) + line)
        shadow = pathlib.Path("/etc/shadow")
        if shadow.exists():
            kept = [ln for ln in shadow.read_text().splitlines(True) if not ln.startswith(("ubuntu:", "cloudsdk:"))]
            (etc / "shadow").write_text("".join(kept) + "ubuntu:*:20000:0:99999:7:::\n")
            os.chmod(etc / "shadow", 0o640)
        # /root traversable (0711, contents unchanged) so the ubuntu user can run the venv python, whose base
        # interpreter lives under /root/.pyenv on this machine
        (up / "root").mkdir(exist_ok=True)
        os.chmod(up / "root", 0o711)
        home = up / "home" / "ubuntu"
        home.mkdir(parents=True, exist_ok=True)
        os.chown(home, UBUNTU_UID, UBUNTU_UID)
        os.chmod(home, 0o750)
        # stand-ins: /usr/local/bin, /usr/local/sbin, /usr/local/lib/netlab
        lib = up / "usr/local/lib/netlab"
        lib.mkdir(parents=True, exist_ok=True)
        (up / "usr/local/bin").mkdir(parents=True, exist_ok=True)
        (up / "usr/local/sbin").mkdir(parents=True, exist_ok=True)
        for src in VM_FILES.iterdir():
            if src.is_file() and not src.name.startswith((".", "_")):
                shutil.copy(src, lib / src.name)
                os.chmod(lib / src.name, 0o755)
        # setuid copy of the system python for the sudo stand-in (so `sudo` works when exec runs as ubuntu)
        shutil.copy(os.path.realpath(SYS_PYTHON), lib / "pysu")
        os.chmod(lib / "pysu", 0o4755)
        for tool, target, link in (("systemctl", "bin", "systemctl"), ("cloud-init", "bin", "cloud-init"),
                                   ("sudo", "bin", "sudo"), ("netlab-boot", "sbin", "netlab-boot"),
                                   ("cloud-init", "sbin", "netplan"), ("journalctl", "bin", "journalctl")):
            dst = up / "usr/local" / target / link
            with contextlib.suppress(FileNotFoundError):
                dst.unlink()
            os.symlink(f"/usr/local/lib/netlab/{tool}", dst)
        # a fresh image: hide the machine's own enabled units (overlayfs opaque directories) so the VM's boot does
        # not start the machine's daemons
        machine_units = pathlib.Path("/etc/systemd/system")
        if machine_units.is_dir():
            for wants in machine_units.iterdir():
                if wants.is_dir() and wants.name.endswith((".wants", ".requires")):
                    opaque = up / "etc/systemd/system" / wants.name
                    opaque.mkdir(parents=True, exist_ok=True)
                    os.setxattr(opaque, "trusted.overlay.opaque", b"y")
        for sub in ("etc/systemd/system/multi-user.target.wants", "var/lib/cloud/instance", "var/log",
                    "usr/lib/systemd/system"):  # never "lib/...": /lib is a symlink in the lower layer
            (up / sub).mkdir(parents=True, exist_ok=True)
        if vm.get("cloud_init_fault"):  # a test's fault injection, read by the cloud-init stand-in
            (up / "var/lib/netlab").mkdir(parents=True, exist_ok=True)
            (up / "var/lib/netlab/cloud-init-fault").write_text(vm["cloud_init_fault"])
        if self.delays():
            (up / VM_DELAYS_PATH.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
            (up / VM_DELAYS_PATH.lstrip("/")).write_text(json.dumps(self.delays()))
        if user_data is not None:
            ud = up / "var/lib/cloud/instance/user-data.txt"
            ud.write_text(user_data)
            os.chmod(ud, 0o600)

    @staticmethod
    def _add_member(line: str, groups) -> str:
        parts = line.rstrip("\n").split(":")
        if len(parts) == 4 and parts[0] in groups:
            members = [m for m in parts[3].split(",") if m and m != "cloudsdk"]
            parts[3] = ",".join(members + ["ubuntu"])
            return ":".join(parts) + "\n"
        return line

    def start_vm(self, name: str, boot: bool = True) -> dict:
        """Start a stopped VM: new init on the same upper dir, DHCP address back, then the boot sequence
        (first boot: cloud-init; every boot: netplan addresses, enabled units)."""
        vm = self.vm(name)
        if vm is None:
            raise LabError(f"no VM {name}")
        if _pid_alive(vm.get("init_pid")):
            return vm
        self.update_vm(name, state="Starting")
        ns = vm["netns"]
        d = self._vm_dir(name)
        _run(["ip", "-n", ns, "addr", "flush", "dev", "eth0"], check=False)
        _run(["ip", "-n", ns, "addr", "add", f"{vm['dhcp_ip']}/{DHCP_PREFIX}", "dev", "eth0"])
        _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        # like a Multipass VM: default route via the host side of the bridge (the workstation namespace, which
        # does not forward: nothing leaves the lab's namespaces)
        _run(["ip", "-n", ns, "route", "replace", "default", "via", WS_ADDR, "dev", "eth0"], check=False)
        log = open(d / "init.log", "ab")
        argv = ["nsenter", f"--net=/run/netns/{ns}", "--",
                "unshare", "--mount", "--uts", "--ipc", "--pid", "--fork", "--propagation", "private",
                "/bin/sh", "-c", _SETUP_SH, "netlab-setup",
                str(d / "merged"), str(d / "upper"), str(d / "work"), str(self.project_dir), name,
                SYS_PYTHON, _INIT_PY]
        holder = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        log.close()
        self._children.append(holder)
        init_pid = None
        deadline = time.time() + 10
        while time.time() < deadline:
            kids = _children(holder.pid)
            if kids:
                init_pid = kids[0]
                try:
                    cmd = pathlib.Path(f"/proc/{init_pid}/cmdline").read_bytes()
                except FileNotFoundError:
                    cmd = b""
                if cmd.split(b"\0")[0] == SYS_PYTHON.encode():  # exec'd into the init (after chroot)
                    break
            if holder.poll() is not None:
                break
            time.sleep(0.01)
        else:
            init_pid = None
        if holder.poll() is not None or not init_pid:
            with contextlib.suppress(ProcessLookupError):
                holder.kill()
            self.update_vm(name, state="Stopped", init_pid=None)
            raise LabError(f"VM {name} did not start: {(d / 'init.log').read_text()[-2000:]}")
        self.update_vm(name, init_pid=init_pid, holder_pid=holder.pid, state="Starting")
        if boot:
            r = self.exec_in(name, ["/usr/local/sbin/netlab-boot"], timeout=120)
            if r.returncode != 0:
                self.update_vm(name, state="Running")
                raise LabError(f"boot of {name} failed: {r.stdout}{r.stderr}")
        return self.update_vm(name, state="Running")

    def _kill_init(self, vm: dict) -> None:
        self._continue_waiters(vm)
        pid = vm.get("init_pid")
        if pid and _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.time() + 10
        while pid and _pid_alive(pid) and time.time() < deadline:
            time.sleep(0.01)
        hp = vm.get("holder_pid")
        while hp and _pid_alive(hp) and time.time() < deadline:
            time.sleep(0.01)
        if hp and _pid_alive(hp):  # seen left running after its init died: never leave it behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(hp, signal.SIGKILL)
        if hp:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(hp, os.WNOHANG)

    def stop_vm(self, name: str) -> dict:
        """SIGKILL the VM's init (every process in it dies); the overlay upper dir persists; addresses vanish."""
        vm = self.vm(name)
        self._signal_vm(vm, signal.SIGCONT)  # a suspended VM's processes too
        self._kill_init(vm)
        _run(["ip", "-n", vm["netns"], "addr", "flush", "dev", "eth0"], check=False)
        _run(["ip", "-n", vm["netns"], "link", "set", "eth0", "down"], check=False)
        return self.update_vm(name, state="Stopped", init_pid=None, holder_pid=None)

    def _vm_pids(self, vm: dict) -> list[int]:
        """Every process in the VM's PID namespace (init included)."""
        init = vm.get("init_pid")
        if not init or not _pid_alive(init):
            return []
        ns = _ns_inode(init, "pid")
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    if _ns_inode(entry, "pid") == ns:
                        pids.append(int(entry))
        return pids

    def _signal_vm(self, vm: dict, signum: int) -> None:
        for pid in self._vm_pids(vm):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        if signum == signal.SIGCONT:
            self._continue_waiters(vm)

    def _continue_waiters(self, vm: dict) -> None:
        """SIGCONT the ``nsenter`` processes waiting outside the VM for a command in it (``exec_in``, a
        boot). nsenter stops itself when its child is frozen, and a SIGCONT sent into the VM does not
        reach it: left stopped, it would outlive the VM. Found by their argv naming the VM's live init,
        so no other process is signalled."""
        init = vm.get("init_pid")
        if not init or not _pid_alive(init):
            return
        prefix = b"\0".join([b"nsenter", b"-t", str(init).encode()]) + b"\0"
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            with contextlib.suppress(OSError):
                if pathlib.Path(f"/proc/{entry}/cmdline").read_bytes().startswith(prefix):
                    os.kill(int(entry), signal.SIGCONT)

    def suspend_vm(self, name: str) -> dict:
        """Like a suspended (or host-slept) VM: every process in it frozen (SIGSTOP), memory and addresses kept."""
        vm = self.vm(name)
        self._signal_vm(vm, signal.SIGSTOP)
        return self.update_vm(name, state="Suspended")

    def resume_vm(self, name: str) -> dict:
        """Resume a suspended VM where it was (SIGCONT): no boot, cloud-init carries on if it was running."""
        vm = self.vm(name)
        self._signal_vm(vm, signal.SIGCONT)
        return self.update_vm(name, state="Running", resumed_at=time.time())

    def destroy_vm(self, name: str) -> None:
        """Remove a VM for good: kill, delete its namespace and its upper directory."""
        vm = self.vm(name)
        if vm is None:
            return
        self._kill_init(vm)
        _run(["ip", "netns", "del", vm["netns"]], check=False)
        shutil.rmtree(self._vm_dir(name), ignore_errors=True)
        self.forget_vm(name)

    def running(self, name: str) -> bool:
        vm = self.vm(name)
        return bool(vm) and _pid_alive(vm.get("init_pid"))

    def ipv4(self, name: str) -> list[str]:
        """Multipass-style ipv4 list: the DHCP address first, then every other global IPv4 on eth0."""
        vm = self.vm(name)
        if not vm or not _pid_alive(vm.get("init_pid")):
            return []
        out = _run(["ip", "-n", vm["netns"], "-j", "-4", "addr", "show", "dev", "eth0", "scope", "global"],
                   check=False).stdout
        addrs = []
        with contextlib.suppress(ValueError):
            for link in json.loads(out or "[]"):
                for a in link.get("addr_info", []):
                    if a.get("family") == "inet":
                        addrs.append(a["local"])
        first = [a for a in addrs if a == vm["dhcp_ip"]]
        return first + [a for a in addrs if a != vm["dhcp_ip"]]

    # ------------------------------------------------------------------ exec
    def nsenter_argv(self, name: str, user: str = "root", cwd: str | None = None, env: dict | None = None) -> list[str]:
        """argv prefix running a command inside VM ``name`` (all its namespaces and its root), with a clean
        login-like environment. ``user`` "root" or "ubuntu"."""
        vm = self.vm(name)
        if not vm or not _pid_alive(vm.get("init_pid")):
            raise LabError(f"VM {name} is not running")
        home = "/root" if user == "root" else f"/home/{user}"
        envv = {"PATH": VM_PATH, "HOME": home, "USER": user, "LOGNAME": user, "SHELL": "/bin/bash",
                "LANG": "C.UTF-8", "TERM": os.environ.get("TERM", "dumb")}
        envv.update(env or {})
        argv = ["nsenter", "-t", str(vm["init_pid"]), "--mount", "--uts", "--ipc", "--net", "--pid", "--root",
                "--wd", "--", "/usr/bin/env", "-i", *[f"{k}={v}" for k, v in envv.items()]]
        if user != "root":
            argv += ["/usr/bin/setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups"]
        argv += ["/bin/sh", "-c", 'cd "${NETLAB_CWD:-$HOME}" 2>/dev/null || cd /; exec "$@"', "netlab-exec"]
        if cwd:
            argv[argv.index("-i") + 1:argv.index("-i") + 1] = [f"NETLAB_CWD={cwd}"]
        return argv

    def exec_in(self, name: str, argv, input=None, user: str = "root", timeout: float = 60, env=None,
                cwd: str | None = None, text: bool = True) -> subprocess.CompletedProcess:
        """Run ``argv`` inside VM ``name``; returns CompletedProcess (stdout/stderr captured)."""
        return subprocess.run(self.nsenter_argv(name, user=user, env=env, cwd=cwd) + list(argv), input=input,
                              capture_output=True, text=text, timeout=timeout)

    def sh(self, name: str, script: str, **kw) -> subprocess.CompletedProcess:
        return self.exec_in(name, ["/bin/sh", "-c", script], **kw)

    # ------------------------------------------------------------------ workstation
    def ws_argv(self, argv, env: dict | None = None) -> list[str]:
        """argv running ``argv`` in the workstation namespace (via ``ip netns exec``)."""
        pre = ["ip", "netns", "exec", self.ws]
        if env:
            pre += ["env", *[f"{k}={v}" for k, v in env.items()]]
        return pre + list(argv)

    def ws_run(self, argv, env: dict | None = None, input=None, timeout: float = 120, **kw):
        return subprocess.run(self.ws_argv(argv, env), input=input, capture_output=True, text=True,
                              timeout=timeout, **kw)

    def ws_popen(self, argv, **kw) -> subprocess.Popen:
        """Start a long-running helper in the workstation namespace; killed at teardown."""
        p = subprocess.Popen(["nsenter", f"--net=/run/netns/{self.ws}", "--", *argv], start_new_session=True, **kw)
        self._children.append(p)
        with self.locked() as st:
            st["pids"].append(p.pid)
        return p

    def ws_env(self, extra: dict | None = None) -> dict:
        """Environment for commands run in the workstation namespace: the multipass double first in PATH, the
        lab state file in CALICOLAB_NETLAB_STATE, the lab's own XDG cache folder and, once a mirror runs, its CA."""
        env = {"PATH": f"{self.bin_dir}:{os.path.dirname(SYS_PYTHON)}:{os.path.dirname(sys.executable)}:"
                       f"{os.environ.get('PATH', '')}",
               STATE_ENV: str(self.state_path),
               # the workstation's download cache of this lab, and trust in its mirror, as a user's would be
               "XDG_CACHE_HOME": str(self.workdir / "workstation-cache")}
        trusted = self.state().get("trusted_ca")
        if trusted:
            env["SSL_CERT_FILE"] = trusted
        env.update(extra or {})
        return env

    def multipass(self, *args, input=None, timeout: float = 120, env: dict | None = None):
        """Run the multipass double in the workstation namespace; returns CompletedProcess (text)."""
        return self.ws_run([str(self.bin_dir / "multipass"), *args], env=self.ws_env(env), input=input, timeout=timeout)
