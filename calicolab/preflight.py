"""Checks on the workstation before pyinfra connects to anything or asks anything.

``inventory.py`` calls :func:`run` while pyinfra loads the inventory, which is before it connects to
a host, plans, prompts or changes anything. It ends the run with one message and a non-zero exit
code, without a traceback or a prompt, when:

* the command is not run from the checkout (the deploy files import ``tasks/``);
* a setting is invalid (every problem at once, each naming the field and what is valid);
* ``multipass`` is missing, its daemon does not answer, or it is older than calicolab supports;
* stdin is not a terminal and the run would have to ask "Press enter to execute" (use ``-y`` or ``--dry``);
* another calicolab run holds the lab (runs that change things take the lab's lock; verify.py and
  diagnose.py only look, like a dry run).

It warns, and goes on, when the lab's VMs need more memory or CPUs than this machine has.

Example (``inventory.py``):

.. code:: python

    from calicolab import preflight

    lab = preflight.run(checkout=Path(__file__).parent)
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import click
import gevent
from pyinfra import logger
from pyinfra.api.exceptions import PyinfraError
from pyinfra.context import ctx_state
from pyinfra_cli.exceptions import CliError
from pyinfra_cli.util import parse_cli_arg

from calicolab import multipass as mp
from calicolab.model import Lab, LabConfigError, load_defaults, load_lab
from calicolab.state import LabBusy, LabState, StateError

#: Seconds `multipass version` may take: it asks the daemon, which answers at once when it is up.
VERSION_TIMEOUT = 30
#: pyinfra commands that never change anything and never ask.
READ_ONLY_COMMANDS = ("fact", "debug-inventory")
#: deploy files that only look at the lab (the report card, the diagnostics bundle): no lock, like --dry
READ_ONLY_DEPLOYS = ("verify.py", "diagnose.py")


class StopRun(CliError, PyinfraError):
    """Ends the pyinfra run with one line on stderr and ``exit_code``, before anything was done.

    It is a ``PyinfraError`` so that pyinfra's file loader passes it on untouched, and a
    ``click.ClickException`` so that click prints it (no traceback) and exits with its code.
    """

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file=None) -> None:
        click.echo(f"calicolab: {self.message}", file=file, err=True)  # stderr unless click names a file


def cli_params() -> dict[str, Any]:
    """The options of the running ``pyinfra`` command (empty when pyinfra is used as a library)."""
    context = click.get_current_context(silent=True)
    return dict(context.params) if context is not None else {}


def cli_overrides(params: dict[str, Any]) -> dict[str, Any]:
    """The ``--data key=value`` settings of this run, converted exactly as pyinfra converts them."""
    overrides = {}
    for pair in params.get("data") or ():
        key, _, value = pair.partition("=")
        overrides[key] = parse_cli_arg(value)
    return overrides


def _deploy_files(params: dict[str, Any]) -> list[str]:
    return [op for op in params.get("operations") or () if op.endswith(".py")]


def check_checkout(checkout: Path) -> None:
    here, there = Path.cwd().resolve(), checkout.resolve()
    if here != there:
        raise StopRun(f"run pyinfra from the calicolab checkout, where its deploy files and group_data/ are: cd {there}")


def check_settings(overrides: dict[str, Any]) -> Lab:
    try:
        return load_lab(load_defaults() | overrides)
    except LabConfigError as error:
        raise StopRun(str(error), exit_code=2) from None


def check_stdin(params: dict[str, Any]) -> None:
    """pyinfra asks "Press enter to execute" before changing anything; without a terminal that is an EOFError."""
    asks = _deploy_files(params) and not (params.get("yes") or params.get("dry") or params.get("json_output"))
    if asks and not sys.stdin.isatty():
        raise StopRun(
            "stdin is not a terminal, so pyinfra cannot ask before it changes the lab: add -y to apply the "
            "changes, or --dry to only show them",
        )


def check_multipass(multipass_bin: str, os_name: str | None = None) -> str:
    """The daemon's version; :class:`StopRun` when Multipass is missing, down or too old."""
    argv = mp.version_argv(multipass_bin)
    if shutil.which(argv[0]) is None:
        raise StopRun(mp.not_installed_hint(multipass_bin, os_name))
    try:
        result = mp.run_process(argv, timeout=VERSION_TIMEOUT)
    except TimeoutError:
        raise StopRun(f"`{mp.shell_join(argv)}` did not answer within {VERSION_TIMEOUT}s: "
                      f"{mp.daemon_down_hint(os_name)}") from None
    except OSError as error:
        raise StopRun(f"cannot run {multipass_bin!r}: {error.strerror or error}") from None
    if result.returncode != 0:
        message = mp.clean_message(result.stdout, result.stderr)
        raise StopRun(f"`{mp.shell_join(argv)}` failed (exit {result.returncode}): {message}")
    try:
        _client, daemon = mp.parse_version(result.stdout)
    except mp.MultipassOutputError as error:
        raise StopRun(f"{error}; is {multipass_bin!r} Multipass?") from None
    if daemon is None:
        raise StopRun(mp.daemon_down_hint(os_name))
    found = mp.version_tuple(daemon)
    if found is None or found < mp.MINIMUM_VERSION:
        raise StopRun(mp.upgrade_hint(daemon, ".".join(map(str, mp.MINIMUM_VERSION)), os_name))
    return daemon


def workstation_memory() -> int | None:
    """Bytes of memory in this machine (Linux, macOS and WSL), or None when it cannot be read."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def size_warnings(lab: Lab, memory: int | None, cpus: int | None) -> list[str]:
    """What the lab's VMs ask for beyond this machine (Multipass starts them, then they swap or stall)."""
    warnings = []
    wanted = sum(vm.memory_bytes for vm in lab.vms.values())
    if memory and wanted > memory:
        sizes = ", ".join(f"{vm.name} {vm.memory}" for vm in lab.vms.values())
        warnings.append(
            f"the lab's VMs need {wanted / 1024**3:.1f} GiB of memory ({sizes}) but this machine has "
            f"{memory / 1024**3:.1f} GiB: lower vm_memory, or expect the VMs to be slow",
        )
    for vm in lab.vms.values():
        if cpus and vm.cpus > cpus:
            warnings.append(f"vm_cpus.{vm.name} is {vm.cpus} but this machine has {cpus} CPUs: Multipass will refuse it")
    return warnings


def _non_interactive_failures() -> None:
    """Without a terminal, pyinfra's "hosts failed, continue?" prompt would raise EOFError: continue as -y does."""
    state = ctx_state.get()
    if state is not None and not sys.stdin.isatty() and getattr(state, "should_raise_failed_hosts", None):
        state.should_raise_failed_hosts = lambda _state: False


def _quiet_greenlet_errors() -> None:
    """pyinfra ends a run whose hosts all failed with a PyinfraError raised inside a greenlet; gevent
    would print that greenlet's traceback before pyinfra prints the one-line error."""
    hub = gevent.get_hub()
    if PyinfraError not in hub.NOT_ERROR:
        hub.NOT_ERROR = (*hub.NOT_ERROR, PyinfraError)


def take_lock(lab: Lab, dry: bool) -> None:
    """Runs that change things hold the lab's lock until the process ends; a dry run only says who holds it."""
    lab_state = LabState(lab.state_path)
    if dry:
        holder = lab_state.lock_holder()
        if holder:
            logger.warning(
                f"another calicolab run (pid {holder.get('pid', '?')}, started {holder.get('started', '?')}) "
                "holds the lab and is changing it: this plan shows the lab as it is now",
            )
        return
    try:
        fd, stale = lab_state.lock()
    except LabBusy as busy:
        raise StopRun(str(busy)) from None
    except StateError as error:
        raise StopRun(f"state_dir: {error}", exit_code=2) from None
    atexit.register(LabState.unlock, fd)
    if stale:
        logger.warning(
            f"the calicolab run with pid {stale.get('pid', '?')} (started {stale.get('started', '?')}) ended "
            "without releasing the lab: taking its lock over",
        )


def run(checkout: Path) -> Lab | None:
    """Every check, in the order a person would want the answers; returns the validated lab."""
    params = cli_params()
    if not params:
        return None
    _quiet_greenlet_errors()
    check_checkout(checkout)
    lab = check_settings(cli_overrides(params))
    if params.get("operations", ("",))[0] in READ_ONLY_COMMANDS:
        return lab
    check_multipass(lab.multipass_bin)
    check_stdin(params)
    _non_interactive_failures()
    for warning in size_warnings(lab, workstation_memory(), os.cpu_count()):
        logger.warning(f"calicolab: {warning}")
    read_only = bool(_deploy_files(params)) and all(Path(f).name in READ_ONLY_DEPLOYS for f in _deploy_files(params))
    take_lock(lab, dry=bool(params.get("dry")) or read_only)
    return lab
