"""Headless Debian Chromium for the browser tests, driven over the Chrome DevTools Protocol:
one browser process per test module, and a fresh browser context (its own cookies and
storage, like a new visitor) for each page. `make browser` installs Chromium; without it the
tests skip with the reason, unless LEADFLOW_REQUIRE_BROWSER=1 (as .ci/run sets), where they
fail."""

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
DESKTOP_USER_AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/156.0.0.0 Safari/537.36"
)
"""What an ordinary visitor's Chrome on Windows says (headless Chromium's own user agent says
HeadlessChrome, which the gateway rightly flags as a bot)."""


def unavailable(reason: str) -> None:
    """Skip with the reason, or fail when the browser tests are required."""
    if REQUIRE_BROWSER:
        pytest.fail(f"{reason}; LEADFLOW_REQUIRE_BROWSER is set")
    pytest.skip(reason)


def chromium_binary() -> str:
    if CHROMIUM is None:
        unavailable("Chromium is not installed (`make browser` installs Debian's chromium)")
    assert CHROMIUM is not None
    return CHROMIUM


class Session:
    """One page target's DevTools session (flat mode, over the browser's socket)."""

    def __init__(self, browser: Browser, session_id: str) -> None:
        self.browser = browser
        self.session_id = session_id
        self.console: list[str] = []

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        return await self.browser.call(method, session_id=self.session_id, **params)

    async def evaluate(self, expression: str) -> Any:
        result = await self.call(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise RuntimeError(f"page script failed: {text}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 15.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not await self.evaluate(expression):
            if loop.time() > deadline:
                console = "\n".join(self.console[-30:])
                raise AssertionError(f"page never satisfied {expression!r}; console:\n{console}")
            await asyncio.sleep(0.05)

    async def navigate(self, url: str) -> None:
        await self.call("Page.navigate", url=url)
        await self.wait_for("document.readyState === 'complete'")


class Browser:
    """A Chromium process and its browser-level DevTools socket."""

    def __init__(self, socket: Any) -> None:
        self._socket = socket
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._sessions: dict[str, Session] = {}
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self._socket:
            message = json.loads(raw)
            future = self._pending.pop(message.get("id", -1), None)
            if future is not None and not future.done():
                future.set_result(message)
                continue
            session = self._sessions.get(message.get("sessionId", ""))
            if session is not None and message.get("method") == "Runtime.consoleAPICalled":
                args = message["params"].get("args", [])
                text = " ".join(str(arg.get("value", arg.get("description", ""))) for arg in args)
                session.console.append(f"{message['params'].get('type')}: {text}")

    async def call(
        self, method: str, *, session_id: str | None = None, **params: Any
    ) -> dict[str, Any]:
        message_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[message_id] = future
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params}
        if session_id:
            message["sessionId"] = session_id
        await self._socket.send(json.dumps(message))
        reply = await asyncio.wait_for(future, 30)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    @contextlib.asynccontextmanager
    async def page(self, user_agent: str | None = DESKTOP_USER_AGENT) -> AsyncIterator[Session]:
        """A blank page in a new browser context (a new visitor: no cookies, no storage),
        with an ordinary desktop user agent unless told otherwise."""
        context = (await self.call("Target.createBrowserContext"))["browserContextId"]
        try:
            target = await self.call(
                "Target.createTarget", url="about:blank", browserContextId=context
            )
            attached = await self.call(
                "Target.attachToTarget", targetId=target["targetId"], flatten=True
            )
            session = Session(self, attached["sessionId"])
            self._sessions[session.session_id] = session
            await session.call("Page.enable")
            await session.call("Runtime.enable")
            if user_agent:
                await session.call("Emulation.setUserAgentOverride", userAgent=user_agent)
            yield session
        finally:
            with contextlib.suppress(Exception):
                await self.call("Target.disposeBrowserContext", browserContextId=context)

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader


@contextlib.asynccontextmanager
async def chromium(binary: str, profile: Path) -> AsyncIterator[Browser]:
    """Headless Chromium with a DevTools socket, stopped on exit."""
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
            version = (await http.get(f"http://127.0.0.1:{port}/json/version")).json()
        async with websockets.connect(version["webSocketDebuggerUrl"], max_size=None) as socket:
            browser = Browser(socket)
            try:
                yield browser
            finally:
                await browser.close()
    finally:
        process.terminate()
        try:
            await asyncio.to_thread(process.wait, 10)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait)
