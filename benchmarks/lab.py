"""Deploy benchmarks in the namespace test lab, as root: ``.venv/bin/python benchmarks/lab.py [--profile DIR]``.

Runs the real CLI (``pyinfra inventory.py deploy.py``) against the test lab (multipass double, fake k3s, Kubernetes
API emulator, download mirror) and prints figures; asserts nothing. It imports no product code, so it runs against
any later version of it. One run measures, in order:

1. WITH the lab's realistic delays (tests/support/netlab/lab.py ``REALISTIC_DELAYS``: launch 30 s, cloud-init apt
   10 s, 5 s per binary download, pod start 5 s, Calico Available 15 s):
   * a build from nothing (``deploy.py -y``): wall time, beside the critical path of the injected delays
     (``CHAIN`` below) and the ratio wall / critical path;
   * the timeline of that build: when each launch and each download started (the multipass double's call log and
     the mirror's request log), relative to the start of the run;
   * ``teardown.py -y``, then a rebuild: how many binaries the mirror served in the rebuild.
2. WITHOUT delays, on the built lab (medians of ``ROUNDS`` rounds, each a floor, a re-run and a dry run):
   * the floor ``pyinfra inventory.py exec -y -- true`` on the same hosts (the 4 VMs and @local);
   * the converged re-run ``deploy.py -y`` and the dry run ``deploy.py --dry --diff``, as time and as a ratio to
     the floor;
   * the ``multipass`` calls per host in one no-op re-run (each ``multipass exec`` is a round trip that costs a few
     hundred milliseconds with real Multipass).
3. With ``--profile DIR``: one re-run and one dry run again under benchmarks/optimer.py (phases, the slowest
   operations and the facts, each with the ``multipass exec`` it made) and under cProfile (``DIR/rerun.prof``,
   ``DIR/dry.prof``; read them with ``python -m pstats``), plus the commands run through ``multipass exec``.

The pyinfra processes get a fresh HOME and XDG_CACHE_HOME, so a build "from nothing" finds no workstation cache
from an earlier run.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import types
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.netlab.fixtures import netlab_session  # noqa: E402
from tests.support.netlab.lab import REALISTIC_DELAYS, WS_ADDR  # noqa: E402
from tests.support.netlab.mirror import Mirror  # noqa: E402

PYINFRA = str(Path(sys.executable).with_name("pyinfra"))
VMS = ("control", "node1", "node2", "host1")
AGENTS = ("node1", "node2")
#: rounds of (floor, re-run, dry run) without delays; the figures are the medians
ROUNDS = 7

#: The lab's real dependencies between the injected delays: step -> (delay, steps it must wait for). A step with
#: no delay is a join. What cannot overlap: a VM's launch (image + boot), then its cloud-init package step (apt;
#: the k3s installer needs curl from it), then the k3s binary download in that VM; the server must be up before
#: the tigera-operator pod starts; TigeraStatus calico turns Available once the operator runs and every node has
#: joined; YaoBank's pods start on a cluster with Calico. host1's kubectl and calicoctl downloads need only host1
#: (and do not depend on each other). The verification needs YaoBank and host1's tools.
CHAIN: dict[str, tuple[str | None, tuple[str, ...]]] = {
    **{f"launch {vm}": ("launch", ()) for vm in VMS},
    **{f"cloud-init apt {vm}": ("apt", (f"launch {vm}",)) for vm in VMS},
    **{f"k3s download {vm}": ("download", (f"cloud-init apt {vm}",)) for vm in ("control", *AGENTS)},
    "k3s server up": (None, ("k3s download control",)),
    **{f"agent {vm} joined": (None, (f"k3s download {vm}", "k3s server up")) for vm in AGENTS},
    "tigera-operator pod start": ("pod_start", ("k3s server up",)),
    "Calico Available": ("calico_available", ("tigera-operator pod start", *(f"agent {vm} joined" for vm in AGENTS))),
    "YaoBank pods start": ("pod_start", ("Calico Available",)),
    "kubectl download host1": ("download", ("cloud-init apt host1",)),
    "calicoctl download host1": ("download", ("cloud-init apt host1",)),
    "verified": (None, ("YaoBank pods start", "kubectl download host1", "calicoctl download host1")),
}


def critical_path(delays: dict) -> tuple[float, list[tuple[str, float]]]:
    """Longest chain of ``CHAIN`` under ``delays``: (seconds, [(step, delay), ...] of the steps with a delay)."""
    finish: dict[str, tuple[float, list]] = {}

    def done(step: str) -> tuple[float, list]:
        if step not in finish:
            delay_key, after = CHAIN[step]
            start, path = max((done(a) for a in after), default=(0.0, []), key=lambda fp: fp[0])
            seconds = float(delays.get(delay_key) or 0) if delay_key else 0.0
            finish[step] = (start + seconds, path + ([(step, seconds)] if delay_key else []))
        return finish[step]

    return done("verified")


class Bench:
    """The lab, its mirror and the product's CLI run in the lab's workstation namespace."""

    def __init__(self, lab, mirror: Mirror, scratch: Path):
        self.lab, self.mirror = lab, mirror
        self.state_dir = scratch / "state"
        self.env = lab.ws_env({"HOME": str(scratch / "home"), "XDG_CACHE_HOME": str(scratch / "cache")})
        (scratch / "home").mkdir()

    @property
    def calls_log(self) -> Path:
        return self.lab.workdir / "multipass-calls.log"

    def calls(self) -> list[dict]:
        if not self.calls_log.exists():
            return []
        return [json.loads(line) for line in self.calls_log.read_text().splitlines() if line.strip()]

    def pyinfra(self, *args: str, command: tuple[str, ...] = (PYINFRA,), timeout: float = 1200) -> float:
        """Run ``pyinfra inventory.py ARGS`` (with the mirror's and the state folder's --data); seconds taken.
        ``command``: how pyinfra is started (e.g. under cProfile)."""
        # options first: after ``exec -- CMD`` they would become CMD's arguments
        argv = [*command, *self.mirror.data_args(), f"--data=state_dir={self.state_dir}", "inventory.py", *args]
        start = time.perf_counter()
        result = self.lab.ws_run(argv, env=self.env, cwd=str(ROOT), timeout=timeout, stdin=subprocess.DEVNULL)
        elapsed = time.perf_counter() - start
        if result.returncode != 0:
            raise SystemExit(f"pyinfra {' '.join(args)} failed ({result.returncode}):\n"
                             f"{(result.stdout + result.stderr)[-4000:]}")
        return elapsed


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def vm_of_address(lab) -> dict[str, str]:
    names = {WS_ADDR: "workstation"}
    for name in lab.vm_names():
        vm = lab.vm(name)
        if vm:
            names[vm["dhcp_ip"]] = name
    return names


def launch_name(argv: list[str]) -> str:
    for flag in ("-n", "--name"):
        if flag in argv:
            return argv[argv.index(flag) + 1]
    named = [a.split("=", 1)[1] for a in argv if a.startswith("--name=")]
    return named[0] if named else "?"


def exec_host(argv: list[str]) -> str:
    """The instance of ``multipass exec [-d DIR] NAME -- CMD``."""
    args, i = argv[1:], 0
    while i < len(args) and args[i].startswith("-") and args[i] != "--":
        i += 2 if args[i] in ("-d", "--working-directory") else 1
    return args[i] if i < len(args) else "?"


BINARY = re.compile(r"/(k3s|kubectl|calicoctl-linux-\w+)$")


def timeline(run_start: float, calls: list[dict], requests: list[dict], names: dict) -> list[str]:
    rows = []
    for call in calls:
        if call["argv"][:1] == ["launch"]:
            rows.append((call.get("start", call["t"]) - run_start, f"launch {launch_name(call['argv'])} started "
                         f"(ended +{call['t'] - run_start:.1f} s)"))
    for request in requests:
        match = BINARY.search(request["path"].split("?")[0])
        if match:
            tool = "k3s" if match.group(1) == "k3s" else match.group(1).split("-")[0]
            rows.append((request["t"] - run_start,
                         f"{tool} download by {names.get(request['client'], request['client'])} started"))
    return [f"  +{offset:6.1f} s  {what}" for offset, what in sorted(rows)]


def multipass_calls_per_host(calls: list[dict]) -> dict[str, collections.Counter]:
    per_host: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for call in calls:
        command = call["argv"][0] if call["argv"] else "?"
        if command == "exec":
            per_host[exec_host(call["argv"])]["exec"] += 1
        else:
            per_host["(workstation)"][command] += 1
    return per_host


def exec_commands(calls: list[dict]) -> collections.Counter:
    """The commands run through ``multipass exec``, shortened to their first words (for the profile)."""
    out = collections.Counter()
    for call in calls:
        if call["argv"][:1] == ["exec"]:
            argv = call["argv"]
            command = argv[argv.index("--") + 1:] if "--" in argv else argv[2:]
            text = " ".join(command)
            text = re.sub(r"\s+", " ", text)
            out[text[:110]] += 1
    return out


def timed_run(bench: Bench, label: str, args: tuple[str, ...], out_dir: Path) -> list[str]:
    """Run pyinfra under benchmarks/optimer.py; where the time of the run went, with the multipass calls made."""
    out = out_dir / f"{label}.timings.json"
    before = len(bench.calls())
    seconds = bench.pyinfra(*args, command=(sys.executable, str(ROOT / "benchmarks" / "optimer.py"), str(out)))
    calls, data = bench.calls()[before:], json.loads(out.read_text())
    records = data["records"]

    def execs(start: float, end: float) -> int:
        return sum(1 for c in calls if c["argv"][:1] == ["exec"] and start <= c.get("start", c["t"]) <= end)

    lines = [f"{label} (optimer): {seconds:.2f} s wall, {len(calls)} multipass calls "
             f"({sum(1 for c in calls if c['argv'][:1] == ['exec'])} exec)"]
    lines.append(f"  interpreter start + imports + inventory: "
                 f"{min(r['start'] for r in records if r['kind'] == 'phase') - data['started']:.2f} s")
    for r in (r for r in records if r["kind"] == "phase"):
        lines.append(f"  phase {r['name']:<8} {r['end'] - r['start']:6.2f} s   multipass exec {execs(r['start'], r['end'])}")
    ops = sorted((r for r in records if r["kind"] == "op"), key=lambda r: r["start"] - r["end"])
    lines.append(f"  operations executed: {len(ops)}; slowest (all hosts in parallel), exec = multipass exec made:")
    lines += [f"    {r['end'] - r['start']:6.2f} s  exec {execs(r['start'], r['end']):3d}  {r['name'][:90]}" for r in ops[:15]]
    per_fact: dict[str, list[float]] = collections.defaultdict(list)
    for r in (r for r in records if r["kind"] == "fact"):
        per_fact[("execute " if r["op"] else "plan    ") + r["name"].split(" ", 1)[1]].append(r["end"] - r["start"])
    lines.append("  facts gathered (phase, fact: count, total seconds over hosts):")
    lines += [f"    {name:<60} {len(t):3d} x  {sum(t):6.2f} s"
              for name, t in sorted(per_fact.items(), key=lambda kv: -sum(kv[1]))[:20]]
    return lines


def profile(bench: Bench, out_dir: Path) -> list[str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for label, args in (("rerun", ("deploy.py", "-y")), ("dry", ("deploy.py", "--dry", "--diff"))):
        lines += timed_run(bench, label, args, out_dir)
        before = len(bench.calls())
        prof = out_dir / f"{label}.prof"
        seconds = bench.pyinfra(*args, command=(sys.executable, "-m", "cProfile", "-o", str(prof), PYINFRA))
        calls = bench.calls()[before:]
        lines.append(f"{label} under cProfile: {seconds:.2f} s, {len(calls)} multipass calls; profile {prof}")
        lines.append(f"  multipass exec commands ({label}), most frequent first:")
        lines += [f"    {n:3d} x {cmd}" for cmd, n in exec_commands(calls).most_common(25)]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", type=Path, metavar="DIR", help="also profile a re-run and a dry run into DIR")
    options = parser.parse_args()
    m = types.SimpleNamespace()  # the measurements
    with netlab_session() as lab, tempfile.TemporaryDirectory(prefix="calicolab-bench-") as scratch:
        mirror = Mirror(lab).start()
        try:
            bench = Bench(lab, mirror, Path(scratch))
            delays = dict(REALISTIC_DELAYS)
            lab.set_delays(delays)
            m.path_seconds, m.path = critical_path(delays)

            progress("build from nothing, with delays")
            m.load_before = os.getloadavg()
            m.run_start = time.time()
            m.build = bench.pyinfra("deploy.py", "-y")
            m.names = vm_of_address(lab)
            m.build_requests = mirror.request_starts()
            m.build_calls = bench.calls()

            progress("teardown, then rebuild (with delays)")
            m.teardown = bench.pyinfra("teardown.py", "-y")
            seen = len(mirror.request_starts())
            m.rebuild = bench.pyinfra("deploy.py", "-y")
            m.rebuild_requests = mirror.request_starts()[seen:]

            lab.set_delays({})
            progress("without delays: floor, re-run, dry run")
            bench.pyinfra("exec", "-y", "--", "true")  # warm-up (imports, page cache)
            before = len(bench.calls())
            bench.pyinfra("deploy.py", "-y")
            m.rerun_calls = bench.calls()[before:]  # one no-op re-run's calls
            # rounds of floor, re-run and dry run one after the other, so a change in the machine's load
            # weighs on all three alike (blocks of samples taken one after the other would not)
            m.floor_samples, m.rerun_samples, m.dry_samples = [], [], []
            for _ in range(ROUNDS):
                m.floor_samples.append(bench.pyinfra("exec", "-y", "--", "true"))
                m.rerun_samples.append(bench.pyinfra("deploy.py", "-y"))
                m.dry_samples.append(bench.pyinfra("deploy.py", "--dry", "--diff"))
            m.floor, m.rerun, m.dry = (statistics.median(m.floor_samples), statistics.median(m.rerun_samples),
                                       statistics.median(m.dry_samples))
            m.load_after = os.getloadavg()

            print(report(m), flush=True)
            if options.profile:
                print("\n".join(profile(bench, options.profile)), flush=True)
                for log in (bench.calls_log, mirror.log_path):
                    (options.profile / log.name).write_bytes(log.read_bytes())
        finally:
            mirror.stop()


def machine() -> str:
    """nproc, CPU model, RAM, Python and pyinfra versions: the line that says what the figures were taken on."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    mem_kb = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:")), 0)
    return (f"Machine: nproc {os.cpu_count()}, CPU {cpu}, RAM {mem_kb / 1024 ** 2:.0f} GiB, Python "
            f"{sys.version.split()[0]}, pyinfra {metadata.version('pyinfra')}")


def report(m: types.SimpleNamespace) -> str:
    """The figures, ready to paste into RESULTS.md."""
    def samples(values):
        return ", ".join(f"{v:.2f}" for v in values)

    def load(values):
        return "/".join(f"{v:.1f}" for v in values)

    binaries = collections.Counter(r["path"].rsplit("/", 1)[-1] for r in m.rebuild_requests
                                   if BINARY.search(r["path"].split("?")[0]))
    build_binaries = sum(1 for r in m.build_requests if BINARY.search(r["path"].split("?")[0]))
    lines = [
        f"### Figures ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "```",
        machine(),
        f"Load average (1/5/15 min) at the start {load(m.load_before)}, at the end {load(m.load_after)}",
        "Injected delays: " + ", ".join(f"{k} {v:g} s" for k, v in REALISTIC_DELAYS.items()),
        f"Critical path:   {' + '.join(f'{step} {s:g}' for step, s in m.path)} = {m.path_seconds:g} s",
        "",
        "WITH delays",
        f"  build from nothing            {m.build:7.1f} s   = {m.build / m.path_seconds:.2f} x critical path "
        f"({m.path_seconds:g} s)",
        f"  teardown                      {m.teardown:7.1f} s",
        f"  rebuild after teardown        {m.rebuild:7.1f} s   = {m.rebuild / m.path_seconds:.2f} x critical path",
        f"  mirror requests in rebuild    {len(m.rebuild_requests):7d}     of them binaries: "
        f"{sum(binaries.values())} ({', '.join(f'{name} x{n}' for name, n in sorted(binaries.items()))})",
        f"  mirror requests in the build  {len(m.build_requests):7d}     of them binaries: {build_binaries}",
        "  timeline of the build (from the start of the run):",
        *timeline(m.run_start, m.build_calls, m.build_requests, m.names),
        "",
        "WITHOUT delays (built lab; median of samples)",
        f"  floor: exec -y -- true        {m.floor:7.2f} s   samples {samples(m.floor_samples)}",
        f"  converged re-run deploy -y    {m.rerun:7.2f} s   = {m.rerun / m.floor:.1f} x floor   samples "
        f"{samples(m.rerun_samples)}",
        f"  dry run --dry --diff          {m.dry:7.2f} s   = {m.dry / m.floor:.1f} x floor   samples "
        f"{samples(m.dry_samples)}",
        "  multipass calls in one no-op re-run, per host:",
    ]
    per_host = multipass_calls_per_host(m.rerun_calls)
    for host in sorted(per_host):
        lines.append(f"    {host:<14} " + ", ".join(f"{cmd} {n}" for cmd, n in sorted(per_host[host].items())))
    lines.append("```")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
