"""The pyinfra CLI with a stopwatch: ``python benchmarks/optimer.py OUT.json inventory.py deploy.py -y ...``.

Runs pyinfra's own CLI unchanged and writes OUT.json: when each phase (inventory load, connect, planning the deploy
file, executing operations) began and ended, each operation's execution window (all hosts), and each fact gathered
(host, fact, phase, seconds). It hooks pyinfra's API only (``pyinfra.api`` and ``pyinfra_cli``), never calicolab,
so it runs against any version of the product. ``benchmarks/lab.py --profile`` uses it; the multipass double's call
log (start times) then tells how many ``multipass exec`` each operation and fact made.
"""

from __future__ import annotations

import atexit
import json
import sys
import time

from pyinfra.api import facts, operations
from pyinfra_cli import cli, main as cli_main

RECORDS: list[dict] = []
CURRENT_OP: list[str] = []


def _timed(kind: str, name_of, original):
    """Wrap ``original`` so each call is recorded as ``{"kind", "name", "start", "end", ...}``."""

    def wrapper(*args, **kwargs):
        record = {"kind": kind, "name": name_of(*args, **kwargs), "start": time.time(),
                  "op": CURRENT_OP[-1] if CURRENT_OP else None}
        if kind == "op":
            CURRENT_OP.append(record["name"])
        try:
            return original(*args, **kwargs)
        finally:
            if kind == "op":
                CURRENT_OP.pop()
            record["end"] = time.time()
            RECORDS.append(record)

    return wrapper


def _op_name(state, op_hash, *_, **__) -> str:
    return ", ".join(sorted(state.get_op_meta(op_hash).names))


def _fact_name(state, host, cls, *_, **__) -> str:
    return f"{host.name} {cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"


def _phase(name: str):
    return lambda *_, **__: name


def install(out_path: str) -> None:
    operations._run_single_op = _timed("op", _op_name, operations._run_single_op)
    facts._get_fact = _timed("fact", _fact_name, facts._get_fact)
    cli.connect_all = _timed("phase", _phase("connect"), cli.connect_all)
    cli._prepare_deploy_operations = _timed("phase", _phase("plan"), cli._prepare_deploy_operations)
    cli.run_ops = _timed("phase", _phase("execute"), cli.run_ops)
    started = time.time()

    def write() -> None:
        with open(out_path, "w") as f:
            json.dump({"started": started, "ended": time.time(), "records": RECORDS}, f)

    atexit.register(write)


if __name__ == "__main__":
    install(sys.argv.pop(1))
    sys.argv[0] = "pyinfra"
    sys.exit(cli_main.main())
