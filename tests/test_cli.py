"""The `leadflow` command as a user runs it: dev, serve and migrate, in real processes."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from schemas.topics import LEAD_MQL
from services.broker import EmbeddedBroker, free_port
from services.launch.migrate import head_revisions
from services.settings import Settings
from tests.conftest import EXAMPLES, POSTGRES_URL, ROOT, _reset_postgres
from tests.support import eventually, read_topic, values

DEMO = {
    "event": "form_submit",
    "anonymousId": "cli-visitor",
    "messageId": "cli-1",
    "traits": {"email": "cli@example.com"},
    "properties": {"form": "demo-request"},
}


def leadflow(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "services.launch.cli", *args],
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "LEADFLOW_CONSUMER_SESSION_TIMEOUT_MS": "2000", **(env or {})},
    )


async def read_until(process: subprocess.Popen[str], marker: str, timeout: float = 30) -> str:
    assert process.stdout is not None
    stdout = process.stdout
    lines: list[str] = []

    def collect() -> str:
        for line in stdout:
            lines.append(line)
            if marker in line:
                break
        return "".join(lines)

    output = await asyncio.wait_for(asyncio.to_thread(collect), timeout)
    assert marker in output, (
        f"{marker!r} never printed; stderr: {process.stderr.read() if process.stderr else ''}"
    )
    return output


def interrupt(process: subprocess.Popen[str]) -> tuple[int, str]:
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    return process.returncode, stderr


@asynccontextmanager
async def running(
    *args: str,
    marker: str,
    env: dict[str, str] | None = None,
) -> AsyncIterator[tuple[subprocess.Popen[str], str]]:
    process = leadflow(*args, env=env)
    try:
        yield process, await read_until(process, marker)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


async def port_closed(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return True
    writer.close()
    return False


def always_working(tmp_path: Path) -> dict[str, str]:
    """The example routing file with reps who work at any hour: `leadflow dev` runs on the
    wall clock, and an MQL outside the example reps' hours would wait in the queue."""
    example = yaml.safe_load((EXAMPLES / "routing.yaml").read_text())
    for rep in example["reps"]:
        rep.pop("hours", None)
        rep.pop("away", None)
    path = tmp_path / "routing.yaml"
    path.write_text(yaml.safe_dump(example))
    return {"LEADFLOW_ROUTING": str(path)}


async def test_dev_runs_the_whole_pipeline_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    port, broker_port = free_port(), free_port()
    args = (
        "dev",
        "--port",
        str(port),
        "--broker-port",
        str(broker_port),
        "--data-dir",
        str(tmp_path / "data"),
    )
    async with running(*args, marker="Press Ctrl-C", env=always_working(tmp_path)) as (
        process,
        banner,
    ):
        key = re.search(r"Write key\s+(\S+)", banner)
        assert key, banner
        assert f"http://127.0.0.1:{port}" in banner
        assert f"127.0.0.1:{broker_port}" in banner
        assert str(tmp_path / "data") in banner
        assert (tmp_path / "data" / "write_key").read_text().strip() == key.group(1)
        admin = re.search(r"Admin key\s+(\S+)", banner)
        assert admin, banner
        assert (tmp_path / "data" / "admin_key").read_text().strip() == admin.group(1)

        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            auth=(key.group(1), ""),
            headers={"X-API-Key": admin.group(1)},
        ) as client:
            assert (await client.post("/v1/track", json=DEMO)).status_code == 200

            async def owned() -> dict[str, object] | None:
                items = (await client.get("/leads", params={"email": "cli@example.com"})).json()[
                    "items"
                ]
                return items[0] if items and items[0]["owner"] else None

            lead = await eventually(owned, timeout=30)

            async def clock_started() -> dict[str, Any] | None:
                response = await client.get(f"/sla/leads/{lead['lead_id']}")
                return response.json() if response.status_code == 200 else None

            sla = await eventually(clock_started, timeout=30)
            assert sla["clocks"][0]["deadline"]

        settings = Settings(kafka_bootstrap=f"127.0.0.1:{broker_port}")
        mql = values(await read_topic(settings, LEAD_MQL, expect=1))
        assert mql[0]["data"]["lead_id"] == lead["lead_id"]

        code, stderr = interrupt(process)
        assert code == 0, stderr
        assert "Traceback" not in stderr
        assert await port_closed(broker_port), "the embedded broker outlived leadflow dev"
        assert await port_closed(port)


async def test_dev_refuses_a_bad_rulebook_clearly(tmp_path: Path) -> None:
    rulebook = tmp_path / "rules.yaml"
    rulebook.write_text("version: '1'\nmql: {threshold: -5}\n")
    broker_port = free_port()
    process = leadflow(
        "dev",
        "--port",
        str(free_port()),
        "--broker-port",
        str(broker_port),
        "--data-dir",
        str(tmp_path),
        env={"LEADFLOW_RULEBOOK": str(rulebook)},
    )
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "mql.threshold" in stderr and str(rulebook) in stderr
    assert "Traceback" not in stderr
    assert await port_closed(broker_port)


async def test_migrate_applies_and_is_idempotent_on_sqlite_and_postgres(tmp_path: Path) -> None:
    await _reset_postgres(POSTGRES_URL)
    for url in (f"sqlite+aiosqlite:///{tmp_path / 'm.db'}", POSTGRES_URL):
        for _ in range(2):
            process = leadflow("migrate", env={"LEADFLOW_DATABASE_URL": url})
            stdout, stderr = process.communicate(timeout=60)
            assert process.returncode == 0, stderr
            assert f"database at revision {', '.join(sorted(head_revisions()))}" in stdout


async def test_services_run_as_separate_processes(broker: EmbeddedBroker, tmp_path: Path) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    migrate = leadflow("migrate", env={"LEADFLOW_DATABASE_URL": database})
    assert migrate.wait(60) == 0
    create = leadflow(
        "apikey",
        "create",
        "--name",
        "ops team",
        "--role",
        "ops",
        env={"LEADFLOW_DATABASE_URL": database},
    )
    ops_key, stderr = create.communicate(timeout=60)
    assert create.returncode == 0, stderr
    assert ops_key.startswith("lf_ops_")
    env = {
        "LEADFLOW_KAFKA_BOOTSTRAP": broker.bootstrap,
        "LEADFLOW_DATABASE_URL": database,
        "LEADFLOW_TOPIC_PREFIX": f"cli{uuid.uuid4().hex[:6]}.",
        "LEADFLOW_WRITE_KEYS": "k1,k2",
    }
    gateway_port, scoring_port = free_port(), free_port()
    async with (
        running(
            "serve", "gateway", "--port", str(gateway_port), env=env, marker="leadflow gateway"
        ) as (gateway, _),
        running(
            "serve", "scoring", "--port", str(scoring_port), env=env, marker="leadflow scoring"
        ) as (scoring, _),
    ):
        async with httpx.AsyncClient(headers={"X-API-Key": ops_key.strip()}) as client:
            sent = await client.post(
                f"http://127.0.0.1:{gateway_port}/v1/track", json=DEMO, auth=("k2", "")
            )
            assert sent.status_code == 200

            async def qualified() -> list[dict[str, object]] | None:
                response = await client.get(
                    f"http://127.0.0.1:{scoring_port}/leads", params={"email": "cli@example.com"}
                )
                items: list[dict[str, object]] = response.json()["items"]
                return items if items and items[0]["stage"] == "mql" else None

            # announced once the default hold for late facts (3 s) has passed
            lead = (await eventually(qualified, timeout=30))[0]
            assert lead["disqualified_by"] == []
            health = (await client.get(f"http://127.0.0.1:{gateway_port}/healthz")).json()
            assert health == {"status": "ok", "parts": ["gateway"]}
        for process in (gateway, scoring):
            code, stderr = interrupt(process)
            assert code == 0, stderr


def test_rules_check_validates_a_file_offline(tmp_path: Path) -> None:
    good = leadflow("rules", "check", "examples/rulebook.yaml")
    stdout, stderr = good.communicate(timeout=60)
    assert good.returncode == 0, stderr
    assert "OK, version" in stdout and "triggers" in stdout
    broken = tmp_path / "rules.yaml"
    broken.write_text("version: '1'\nmql:\n  threshold: lots\n")
    bad = leadflow("rules", "check", str(broken))
    _, stderr = bad.communicate(timeout=60)
    assert bad.returncode == 2
    assert "line 3" in stderr and "mql.threshold" in stderr
    assert "Traceback" not in stderr
