"""The embedded broker never adopts a broker it did not start: a pinned port that something
else listens on is a clear error (nothing is started, nothing is used), an unpinned start
that finds its port taken moves to another free port, and readiness means our own Tansu
process is alive and holds the listening socket."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from services.broker import (
    BrokerError,
    EmbeddedBroker,
    PortTaken,
    free_port,
    listener_owner,
    port_is_free,
)
from tests.conftest import ROOT


@pytest.fixture
def occupied() -> Iterator[int]:
    """A loopback port that another process's listener holds (here: a plain socket)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


async def test_a_pinned_port_that_is_taken_is_a_clear_error(occupied: int) -> None:
    broker = EmbeddedBroker(port=occupied)
    with pytest.raises(PortTaken) as refused:
        await broker.start()
    message = str(refused.value)
    assert f"127.0.0.1:{occupied} is already in use" in message
    assert "--broker-port" in message and "LEADFLOW_KAFKA_BOOTSTRAP" in message
    assert not broker.running  # nothing of ours left behind, and nothing adopted


async def test_a_foreign_broker_on_the_pinned_port_is_never_adopted() -> None:
    """What happened in the field: another process's broker on the pinned port."""
    async with EmbeddedBroker() as foreign:
        ours = EmbeddedBroker(port=foreign.port)
        with pytest.raises(PortTaken):
            await ours.start()
        assert not ours.running
        assert foreign.running  # untouched
        foreign.check()


async def test_an_unpinned_start_moves_to_another_free_port(
    occupied: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    ports = iter([occupied, free_port()])
    monkeypatch.setattr("services.broker.free_port", lambda host="127.0.0.1": next(ports))
    async with EmbeddedBroker() as broker:
        assert broker.port != occupied
        assert broker.pid is not None
        assert listener_owner(broker.pid, broker.port) is True
        broker.check()
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, enable_idempotence=False)
        await producer.start()
        await producer.stop()


async def test_readiness_checks_the_process_is_ours_and_alive() -> None:
    broker = EmbeddedBroker()
    await broker.start()
    try:
        assert broker.pid is not None
        assert listener_owner(broker.pid, broker.port) is True
        assert not port_is_free("127.0.0.1", broker.port)
    finally:
        await broker.stop()
    with pytest.raises(BrokerError, match="not running"):
        broker.check()


def test_leadflow_dev_on_a_taken_broker_port_stops_with_the_reason(
    occupied: int, tmp_path: Path
) -> None:
    """`leadflow dev --broker-port P` with P taken: exit 2 and why, never "leadflow is running"
    on someone else's broker."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.launch.cli",
            "dev",
            "--port",
            str(free_port()),
            "--broker-port",
            str(occupied),
            "--data-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert f"127.0.0.1:{occupied} is already in use" in done.stderr
    assert "leadflow is running" not in done.stdout
    assert "Traceback" not in done.stderr
