"""A real browser (headless Debian Chromium, driven over the Chrome DevTools Protocol) loads a
page of another origin that embeds the pixel and leadflow.js; its page views, a CORS-preflighted
call, an identify and form submission on submit, and the time on page sent with
navigator.sendBeacon when the page is left all reach `lead.activity`.

Chromium comes from Debian (`make browser`). Without it these tests skip, unless
LEADFLOW_REQUIRE_BROWSER=1 (as .ci/run sets), where they fail."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from schemas.topics import LEAD_ACTIVITY
from services.broker import EmbeddedBroker
from services.clock import ManualClock
from services.launch.runtime import Runtime
from tests.conftest import WRITE_KEY
from tests.support import read_topic, serving, values
from tests.test_gateway_http import gateway_settings, running_gateway

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REQUIRE_BROWSER = os.environ.get("LEADFLOW_REQUIRE_BROWSER", "") not in ("", "0")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-port=0",
]


@pytest.fixture
def chromium() -> str:
    if CHROMIUM is None:
        message = "Chromium is not installed (`make browser` installs Debian's chromium)"
        if REQUIRE_BROWSER:
            pytest.fail(message + "; LEADFLOW_REQUIRE_BROWSER is set")
        pytest.skip(message)
    return CHROMIUM


class DevTools:
    """A minimal Chrome DevTools Protocol session on one page target."""

    def __init__(self, socket: Any) -> None:
        self._socket = socket
        self._ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        message_id = next(self._ids)
        await self._socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = json.loads(await asyncio.wait_for(self._socket.recv(), 20))
            if message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result

    async def evaluate(self, expression: str) -> Any:
        result = await self.call(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not await self.evaluate(expression):
            if loop.time() > deadline:
                raise AssertionError(f"page never satisfied {expression!r}")
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def browser_page(binary: str, profile: Path) -> AsyncIterator[DevTools]:
    process = subprocess.Popen(  # noqa: ASYNC220 (spawning does not block)
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        active = profile / "DevToolsActivePort"
        for _ in range(400):
            if active.exists() and active.read_text().strip():
                break
            if process.poll() is not None:
                raise RuntimeError(f"chromium exited with code {process.returncode}")
            await asyncio.sleep(0.05)
        port = active.read_text().splitlines()[0]
        async with httpx.AsyncClient() as http:
            targets = (await http.get(f"http://127.0.0.1:{port}/json/list")).json()
        page = next(target for target in targets if target["type"] == "page")
        async with websockets.connect(page["webSocketDebuggerUrl"], max_size=None) as socket:
            devtools = DevTools(socket)
            await devtools.call("Page.enable")
            yield devtools
    finally:
        process.terminate()
        try:
            await asyncio.to_thread(process.wait, 10)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait)


def site(gateway: str) -> FastAPI:
    """A marketing site on another origin: the pixel, the tracker, a demo-request form."""
    app = FastAPI()
    pixel = (
        f"{gateway}/t.gif?wk={WRITE_KEY}&mid=pixel-1&title=Pricing"
        "&url=http%3A%2F%2Fsite%2Fpricing&utm_source=newsletter"
    )
    page = f"""<!doctype html>
<html><head><title>Pricing</title></head><body>
<h1>Pricing</h1>
<img src="{pixel}" width="1" height="1" alt="">
<form id="demo-request" action="/thanks" method="get">
  <input type="email" name="email"> <input name="first_name"> <button type="submit">Ask</button>
</form>
<script async src="{gateway}/js/leadflow.js" data-write-key="{WRITE_KEY}"></script>
</body></html>"""

    @app.get("/pricing", response_class=HTMLResponse)
    async def pricing() -> str:
        return page

    @app.get("/thanks", response_class=HTMLResponse)
    async def thanks() -> str:
        return "<!doctype html><title>Thanks</title><p>We will be in touch.</p>"

    return app


async def test_a_real_browser_page_reaches_lead_activity(
    chromium: str, broker: EmbeddedBroker, sqlite_url: str, tmp_path: Path, clock: ManualClock
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        # the site is served first so its origin can be allowed by the gateway's CORS setting
        site_app = FastAPI()
        site_url = await stack.enter_async_context(serving(site_app))
        settings = gateway_settings(broker.bootstrap, sqlite_url, tmp_path).model_copy(
            update={"cors_origins": [site_url]}
        )
        runtime: Runtime = await stack.enter_async_context(running_gateway(settings, clock))
        gateway_url = await stack.enter_async_context(serving(runtime.app))
        site_app.router.routes.extend(site(gateway_url).router.routes)
        page = await stack.enter_async_context(browser_page(chromium, tmp_path / "profile"))

        await page.call("Page.navigate", url=f"{site_url}/pricing?utm_source=newsletter")
        await page.wait_for("window.leadflow && window.leadflow.loaded === true")
        # a call that needs a CORS preflight (JSON + Authorization) succeeds from the page
        status = await page.evaluate(
            f"""fetch("{gateway_url}/v1/track", {{method: "POST",
                headers: {{"content-type": "application/json",
                           "authorization": "Basic " + btoa("{WRITE_KEY}:")}},
                body: JSON.stringify({{anonymousId: leadflow.anonymousId(), event: "Pricing Read",
                                       messageId: "cors-1"}})}}).then(r => r.status)"""
        )
        assert status == 200
        await page.evaluate(
            """document.querySelector("input[name=email]").value = "Dana@Example.org";
               document.querySelector("input[name=first_name]").value = "Dana";
               document.querySelector("button").click(); true"""
        )
        await page.wait_for("location.pathname === '/thanks'")
        records = await read_topic(runtime.settings, LEAD_ACTIVITY, expect=6, timeout=20)

    events = values(records)
    by_name: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_name.setdefault(event["data"]["event_name"], []).append(event)
    assert sorted(by_name) == ["Pricing Read", "Time On Page", "form_submit", "identify", "page"]
    pixel, script_page = sorted(by_name["page"], key=lambda event: event["id"] != "pixel-1")
    assert pixel["id"] == "pixel-1"
    assert pixel["data"]["channel"] == "http:/t.gif"
    assert pixel["data"]["properties"]["utm_source"] == "newsletter"
    # headless Chromium says so in its user agent: flagged, not dropped
    assert pixel["data"]["is_bot"] is True
    assert pixel["data"]["context"]["bot_reason"] == "headless_browser"

    assert script_page["data"]["properties"]["url"] == f"{site_url}/pricing?utm_source=newsletter"
    assert script_page["data"]["properties"]["title"] == "Pricing"
    assert script_page["data"]["context"]["campaign"] == {"source": "newsletter"}
    anonymous_id = script_page["data"]["identity"]["anonymous_id"]
    (identify,) = by_name["identify"]
    assert identify["subject"] == "email:dana@example.org"
    assert identify["data"]["attributes"] == {"first_name": "Dana"}
    (form,) = by_name["form_submit"]
    assert form["type"] == "lead.activity.form_submit"
    assert form["data"]["properties"]["form"] == "demo-request"
    (time_on_page,) = by_name["Time On Page"]
    assert time_on_page["data"]["properties"]["seconds"] >= 0
    assert {
        event["data"]["identity"]["anonymous_id"] for event in events if event is not pixel
    } == {anonymous_id}
