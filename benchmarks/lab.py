"""Deploy benchmarks in the namespace test lab: ``python benchmarks/lab.py`` (root). Prints figures.

Measures the real ``pyinfra inventory.py deploy.py`` against the test lab (multipass double, fake k3s,
Kubernetes API emulator), so the figures show calicolab's own overhead (connect, facts, plans, waits),
not the time real VMs and images take:

* dry-run-empty: ``--dry --diff`` with no VM;
* deploy-empty: ``-y`` from nothing to a verified lab;
* rerun: ``-y`` on the built lab (no change);
* dry-run-built: ``--dry --diff`` on the built lab.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.netlab.fixtures import netlab_session  # noqa: E402
from tests.support.netlab.mirror import Mirror  # noqa: E402

PYINFRA = str(Path(sys.executable).with_name("pyinfra"))


def main() -> None:
    with netlab_session() as lab, tempfile.TemporaryDirectory() as state:
        mirror = Mirror(lab).start()
        try:
            def deploy(*args):
                argv = [PYINFRA, "inventory.py", "deploy.py", *args, *mirror.data_args(), f"--data=state_dir={state}/s"]
                start = time.perf_counter()
                result = lab.ws_run(argv, env=lab.ws_env(), cwd=str(ROOT), timeout=900)
                elapsed = time.perf_counter() - start
                if result.returncode != 0:
                    raise SystemExit(f"deploy {' '.join(args)} failed:\n{result.stderr[-2000:]}")
                return elapsed

            figures = [("dry-run-empty", deploy("--dry", "--diff")), ("deploy-empty", deploy("-y"))]
            figures += [("rerun", deploy("-y")), ("dry-run-built", deploy("--dry", "--diff"))]
        finally:
            mirror.stop()
    for label, seconds in figures:
        print(f"{label:<14} {seconds:7.2f} s")


if __name__ == "__main__":
    main()
