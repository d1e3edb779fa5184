"""
The ``@multipass`` connector runs commands inside Multipass VMs with ``multipass exec``.

``connect()`` only reads (``multipass list --format json``): a VM that does not exist yet or is
stopped does not fail the host. Until the VM is running, and only while pyinfra prepares the deploy
("phantom mode"), every command answers "success, no output", so facts fall back to their defaults and
the plan over-reports changes. At execution time the connector looks at the VM again (an earlier
operation may have launched or started it) and fails cleanly if it is still not running; it never
relies on ``multipass exec`` starting a stopped VM on its own.

What it tells operations: ``run_shell_command`` answers ``(False, VmNotRunning)`` when the VM is not
running at execution time (its ``state`` attribute says which state), and
``host.connector_data["multipass_state"]`` is the state it last read (None: no such instance).

Host data:

+ ``multipass_bin``: the Multipass client (default ``multipass``; e.g. ``/snap/bin/multipass``)
+ ``multipass_exec_timeout``: seconds a command may run when the operation sets no ``_timeout``
  (default 600); the local ``multipass exec`` is killed when it expires

Example:

.. code:: python

    # inventory.py
    vms = ["@multipass/control", "@multipass/node1"]

    # shell
    pyinfra @multipass/control exec -- uptime
"""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

import gevent
from typing_extensions import Unpack, override

from pyinfra import logger
from pyinfra.api.command import QuoteString, StringCommand
from pyinfra.api.exceptions import ConnectError, InventoryError
from pyinfra.api.output import echo
from pyinfra.api.state import StateStage
from pyinfra.api.util import get_file_io
from pyinfra.connectors.base import BaseConnector, ConnectorData, DataMeta
from pyinfra.connectors.util import (
    CommandOutput,
    OutputLine,
    execute_command_with_sudo_retry,
    extract_control_arguments,
    make_unix_command_for_host,
)

from calicolab import multipass as mp
from calicolab.polling import Check, poll

if TYPE_CHECKING:
    from io import IOBase  # noqa: F401
    from collections.abc import Iterator

    from pyinfra.api.arguments import ConnectorArguments

#: How long an execution-time command waits for a VM in Starting/Restarting to become Running.
TRANSITION_WAIT = 180


class MultipassConnectorData(ConnectorData, total=False):
    multipass_instance: str
    multipass_bin: str
    multipass_exec_timeout: Union[int, float, str]  # noqa: UP007 - typeguard checks this at runtime


def _output(result: mp.ProcessResult) -> CommandOutput:
    return CommandOutput(
        [OutputLine(name, line) for name in ("stdout", "stderr") for line in result.text(name).splitlines()]
    )


@dataclass
class VmNotRunning(CommandOutput):
    """What ``run_shell_command`` returns (with ``False``) when the VM is not running at execution time.

    Operations tell "the VM is gone or stopped: waiting will not help" from "the command failed" by
    this type, never by the message text. ``state`` is the instance's state (None: it does not exist
    or Multipass did not answer, then ``stderr`` says why).

    Example::

        ok, output = host.run_shell_command(command)
        if not ok and isinstance(output, VmNotRunning):
            ...  # output.state == "Stopped"
    """

    state: str | None = None

    @classmethod
    def of(cls, instance: str, state: str | None, why: str | None = None) -> VmNotRunning:
        message = why or f"instance {instance} is not running (state: {state or 'does not exist'})"
        return cls([OutputLine("stderr", line) for line in message.splitlines()], state)


class MultipassConnector(BaseConnector):
    """
    Execute commands in a Multipass VM through ``multipass exec NAME -- sh -c '<command>'``.
    """

    handles_execution = True

    data_cls = MultipassConnectorData
    data_meta = {
        "multipass_instance": DataMeta("Name of the Multipass instance"),
        "multipass_bin": DataMeta("Multipass client binary", mp.DEFAULT_BIN),
        "multipass_exec_timeout": DataMeta(
            "Seconds a command may take when the operation sets no _timeout",
            mp.DEFAULT_EXEC_TIMEOUT,
        ),
    }

    @override
    @staticmethod
    def make_names_data(name: str | None = None) -> Iterator[tuple[str, dict, list[str]]]:
        if not name:
            raise InventoryError("No Multipass instance name provided: use @multipass/NAME")
        try:
            mp.check_instance_name(name)
        except ValueError as e:
            raise InventoryError(str(e)) from e
        yield name, {"multipass_instance": name}, ["@multipass"]

    # --- helpers -----------------------------------------------------------------------------

    @property
    def instance(self) -> str:
        return self.data.get("multipass_instance") or self.host.name

    @property
    def multipass_bin(self) -> str:
        return self.data.get("multipass_bin") or mp.DEFAULT_BIN

    def _exec_timeout(self, timeout) -> float:
        if timeout:
            return float(timeout)
        try:
            return float(self.data.get("multipass_exec_timeout") or mp.DEFAULT_EXEC_TIMEOUT)
        except (TypeError, ValueError):
            return float(mp.DEFAULT_EXEC_TIMEOUT)

    def _read_state(self, timeout: float = mp.LIST_TIMEOUT, connecting: bool = False) -> str | None:
        """Current state of this instance according to ``multipass list`` (None = no such instance).

        Records it in ``connector_data["multipass_state"]``. Raises ``ConnectError`` naming the cause
        if Multipass is missing, the daemon does not answer or the output is not understood.
        """
        try:
            if connecting and self.state.current_stage == StateStage.Connect:
                instances = mp.planned_instances(self.state, self.multipass_bin)
            else:
                instances = mp.list_instances(self.multipass_bin, timeout=min(float(timeout), mp.LIST_TIMEOUT))
        except mp.MultipassUnavailable as e:
            raise ConnectError(str(e)) from e
        current = instances.get(self.instance)
        state = current["state"] if current else None
        self.host.connector_data["multipass_state"] = state
        return state

    def _is_running(self) -> bool:
        """The one running-check: the state last read by ``_read_state``."""
        return self.host.connector_data.get("multipass_state") == mp.RUNNING

    def _phantom(self) -> bool:
        """True while pyinfra prepares the deploy and the VM is not running."""
        return not self._is_running() and not self.state.is_executing

    def _ensure_running(self) -> VmNotRunning | None:
        """At execution time: None once the VM runs, else why not (a ``VmNotRunning`` output).

        The state is read again (an earlier operation may have launched or started the VM); a VM
        in Starting/Restarting is waited for, up to ``TRANSITION_WAIT`` seconds.
        """
        if self._is_running():
            return None

        def probe(remaining: float) -> Check:
            state = self._read_state(timeout=remaining)
            running = self._is_running()
            return Check(running, f"{self.instance} is {state or 'absent'}",
                         failed=not running and state not in mp.TRANSITIONAL_STATES)

        try:
            check = poll(f"{self.instance} to run", TRANSITION_WAIT, probe, log=self.host.log, pause=gevent.sleep)
        except ConnectError as e:
            return VmNotRunning.of(self.instance, None, str(e))
        if check.done:
            return None
        return VmNotRunning.of(self.instance, self.host.connector_data.get("multipass_state"))

    # --- connector API -------------------------------------------------------------------------

    @override
    def connect(self) -> None:
        state = self._read_state(connecting=True)
        if state != mp.RUNNING:
            now = "does not exist yet" if state is None else f"is {state}"
            logger.warning(f"{self.host.print_prefix}{self.instance} {now}: "
                           "operations will be planned as if it were new")

    @override
    def disconnect(self) -> None:
        self.host.connector_data.pop("multipass_state", None)

    @override
    def run_shell_command(
        self,
        command: StringCommand,
        print_output: bool = False,
        print_input: bool = False,
        **arguments: Unpack[ConnectorArguments],
    ) -> tuple[bool, CommandOutput]:
        """
        Execute a command inside the VM.

        Returns:
            tuple: (bool, CommandOutput)
            Bool indicating success and CommandOutput with stdout/stderr lines.
        """
        control = extract_control_arguments(arguments)
        control.pop("_get_pty", None)  # multipass exec without a terminal
        timeout = self._exec_timeout(control.get("_timeout"))
        stdin = mp.stdin_to_bytes(control.get("_stdin"))
        success_exit_codes = control.get("_success_exit_codes")

        if self._phantom():
            logger.debug(
                "%sphantom mode (%s not running): not executing %s",
                self.host.print_prefix,
                self.instance,
                command,
            )
            return True, CommandOutput([])

        problem = self._ensure_running()
        if problem is not None:
            # pyinfra prints the stderr of failed commands and facts: no extra log line here
            logger.debug("%s%s", self.host.print_prefix, problem.stderr)
            return False, problem

        def execute_command() -> tuple[int, CommandOutput]:
            unix_command = make_unix_command_for_host(self.state, self.host, command, **arguments)
            argv = mp.exec_argv(self.multipass_bin, self.instance, unix_command.get_raw_value())

            logger.debug("--> Running command in %s: %s", self.instance, unix_command)
            if print_input:
                echo(f"{self.host.print_prefix}>>> {unix_command}", err=True)

            result = mp.run_process(argv, stdin=stdin, timeout=timeout)
            output = _output(result)
            if print_output:
                for line in output:
                    echo(f"{self.host.print_prefix}{line.line}", err=True)
            return result.returncode, output

        return_code, output = execute_command_with_sudo_retry(self.host, arguments, execute_command)

        return return_code in (success_exit_codes or (0,)), output

    @override
    def put_file(
        self,
        filename_or_io: str | IOBase,
        remote_filename: str,
        remote_temp_filename: str | None = None,
        print_output: bool = False,
        print_input: bool = False,
        **arguments: Unpack[ConnectorArguments],
    ) -> bool:
        """
        Upload a local file or IO object (text or bytes) in one ``multipass exec``: the bytes go on the
        stdin of ``umask 077 && cat > TMP`` inside the VM, then ``cp TMP REMOTE``, both with the
        operation's arguments (``_sudo`` for root-owned targets), and TMP is removed.
        """
        del remote_temp_filename  # the bytes go to our own temp file in the VM (mp.upload_temp_path)
        with get_file_io(filename_or_io, "rb") as file_io:
            data = file_io.read()
        if isinstance(data, str):
            data = data.encode()

        extract_control_arguments(arguments)  # the payload is the stdin
        temp = QuoteString(mp.upload_temp_path(remote_filename, uuid.uuid4().hex[:12]))
        if print_input:
            echo(f"{self.host.print_prefix}>>> upload {len(data)} bytes to {remote_filename}", err=True)
        # cp (not mv): a new target belongs to the (sudo) user, an existing one keeps owner and mode.
        status, output = self.run_shell_command(
            StringCommand("umask 077 && cat >", temp, "&& cp", temp, QuoteString(remote_filename),
                          "; rc=$? ; rm -f", temp, "2>/dev/null ; exit $rc"),
            print_output=print_output,
            _stdin=data,
            _timeout=None,
            **arguments,
        )
        if not status:
            self.host.log(f"could not write {remote_filename}: {mp.clean_message(output.stdout, output.stderr)}",
                          log_func=logger.error)
            return False

        if print_output:
            echo(f"{self.host.print_prefix}file uploaded: {remote_filename}", err=True)
        return True

    @override
    def get_file(
        self,
        remote_filename: str,
        filename_or_io: str | IOBase,
        remote_temp_filename: str | None = None,
        print_output: bool = False,
        print_input: bool = False,
        **arguments: Unpack[ConnectorArguments],
    ) -> bool:
        """
        Download a file: ``multipass exec NAME -- sh -c 'sudo -H -n cat PATH'``, binary-safe. sudo is
        the default (root-only files are the common case) unless the operation sets sudo, su, doas or
        dzdo itself.
        """
        del remote_temp_filename  # cat writes to stdout: no temp file
        if self._phantom():
            return True
        problem = self._ensure_running()
        if problem is not None:
            self.host.log(problem.stderr, log_func=logger.error)
            return False

        control = extract_control_arguments(arguments)
        if not any(arguments.get(key) for key in ("_sudo", "_su_user", "_doas", "_dzdo")):
            arguments["_sudo"] = True  # root-only files (kubeconfig, user-data) are the common case
        unix_command = make_unix_command_for_host(
            self.state, self.host, StringCommand("cat", QuoteString(remote_filename)), **arguments
        )
        argv = mp.exec_argv(self.multipass_bin, self.instance, unix_command.get_raw_value())
        if print_input:
            echo(f"{self.host.print_prefix}>>> {unix_command}", err=True)
        try:
            result = mp.run_process(argv, timeout=self._exec_timeout(control.get("_timeout")))
        except TimeoutError as e:
            self.host.log(f"download of {remote_filename} timed out: {e}", log_func=logger.error)
            return False
        if not result.ok:
            self.host.log(f"download of {remote_filename} failed: {mp.clean_message(result.stdout, result.stderr)}",
                          log_func=logger.error)
            return False

        if isinstance(filename_or_io, str):
            with open(filename_or_io, "wb") as file_io:
                file_io.write(result.stdout)
        elif isinstance(filename_or_io, io.TextIOBase):
            filename_or_io.write(result.text())
        else:
            filename_or_io.write(result.stdout)

        if print_output:
            echo(f"{self.host.print_prefix}file downloaded: {remote_filename}", err=True)
        return True
