"""The real browser SDKs, unchanged, against leadflow: Segment's analytics.js 2.0 (standard and
batching delivery), RudderStack's JavaScript SDK v3 (XHR and beacon delivery), Snowplow's
browser tracker (with its form- and link-click-tracking plugins), and leadflow's own
leadflow.js and pixel. Each SDK comes from the npm registry, pinned by
tests/browser/package-lock.json and bundled by tests/browser/build.mjs (esbuild) into a script
that a local page of another origin loads: no CDN at test time. Headless Chromium opens each
page as a new visitor with an ordinary desktop user agent, the page calls identify, page and
track as a site does, and the test finds the lead and its ledger through the API.

One Chromium, one leadflow (every part, SQLite) and one site serve the whole module; each test
is its own visitor (its own browser context and email address). The SDK bundles are built by
`make sdks` (part of `make test`); when they are missing the tests build them if node and npm
are there, and otherwise skip with the reason, unless LEADFLOW_REQUIRE_BROWSER=1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, HTMLResponse

from schemas.topics import LEAD_ACTIVITY
from services.broker import EmbeddedBroker
from services.bus import ensure_topics
from services.clock import ManualClock
from services.launch.runtime import PART_NAMES, Runtime
from services.settings import Settings
from tests.browser_support import Browser, Session, chromium, chromium_binary, unavailable
from tests.conftest import (
    EXAMPLES,
    MONDAY_10AM_NEW_YORK,
    ROOT,
    WRITE_KEY,
    _migrated,
    http_client,
    make_settings,
)
from tests.support import eventually, read_topic, serving, values
from tests.test_gateway_http import gateway_settings, running_gateway

SDK_DIR = ROOT / "tests" / "browser"
BUNDLES = SDK_DIR / "dist"
SDKS = ("segment", "rudderstack", "snowplow")
SNOWPLOW_APP = "marketing-site"


def _bundles_current() -> bool:
    built = BUNDLES / "BUILT"
    if not built.exists() or not all((BUNDLES / f"{name}.js").exists() for name in SDKS):
        return False
    sources = [SDK_DIR / "package-lock.json", SDK_DIR / "build.mjs", *SDK_DIR.glob("src/*.js")]
    return all(source.stat().st_mtime <= built.stat().st_mtime for source in sources)


def build_bundles() -> None:
    """`npm ci` (the lock file's exact packages) and the esbuild bundles, as `make sdks` does."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        unavailable("node and npm are missing: the tracker SDKs cannot be installed and bundled")
    assert npm is not None and node is not None
    steps = [[npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], [node, "build.mjs"]]
    for step in steps:
        done = subprocess.run(step, cwd=SDK_DIR, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            pytest.fail(f"{' '.join(step)} failed: {done.stderr[-2000:]}")


@pytest.fixture(scope="module")
def sdk_bundles() -> Path:
    if not _bundles_current():
        build_bundles()
    return BUNDLES


@pytest.fixture(scope="module")
async def browser(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Browser]:
    binary = chromium_binary()
    async with chromium(binary, tmp_path_factory.mktemp("chromium")) as running:
        yield running


@dataclass
class Stack:
    """leadflow (every part) and a marketing site on another origin that serves the bundles
    and whatever pages the tests put in `pages`."""

    runtime: Runtime
    gateway: str
    site: str
    pages: dict[str, str] = field(default_factory=dict)


def site_app(pages: dict[str, str]) -> FastAPI:
    app = FastAPI()

    @app.get("/sdk/{name}.js")
    async def bundle(name: str) -> FileResponse:
        if name not in SDKS:
            raise HTTPException(404)
        return FileResponse(BUNDLES / f"{name}.js", media_type="text/javascript")

    @app.get("/{page}/{path:path}", response_class=HTMLResponse)
    async def page(page: str, path: str) -> str:
        if path == "thanks":
            return pages.get(f"{page}/thanks", "<!doctype html><title>Thanks</title><p>Thanks!")
        if page not in pages:
            raise HTTPException(404)
        return pages[page]

    return app


@pytest.fixture(scope="module")
async def stack(
    broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory, sdk_bundles: Path
) -> AsyncIterator[Stack]:
    data_dir = tmp_path_factory.mktemp("trackers")
    database_url = await _migrated("sqlite", data_dir)
    pages: dict[str, str] = {}
    async with contextlib.AsyncExitStack() as stack:
        site = await stack.enter_async_context(serving(site_app(pages)))
        settings = make_settings(broker.bootstrap, database_url, data_dir).model_copy(
            update={
                "cors_origins": [site],
                "snowplow_apps": {SNOWPLOW_APP: "website"},
                "snowplow_mapping": EXAMPLES / "snowplow.yaml",
            }
        )
        await ensure_topics(settings)
        runtime = Runtime(settings, ManualClock(MONDAY_10AM_NEW_YORK), PART_NAMES)
        await runtime.start()
        stack.push_async_callback(runtime.stop)
        gateway = await stack.enter_async_context(serving(runtime.app))
        yield Stack(runtime, gateway, site, pages)


def visitor(tracker: str) -> str:
    return f"dana.{tracker}.{uuid.uuid4().hex[:8]}@example.org"


async def lead_and_ledger(
    runtime: Runtime, email: str, rules: set[str], timeout: float = 20.0
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The lead of `email` once its ledger holds every rule in `rules`."""
    async with http_client(runtime) as http:

        async def probe() -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
            found = (await http.get("/leads", params={"email": email})).json()["items"]
            if not found:
                return None
            lead = found[0]
            ledger = (await http.get(f"/leads/{lead['lead_id']}/ledger")).json()["entries"]
            return (lead, ledger) if rules <= {line["rule"] for line in ledger} else None

        return await eventually(probe, timeout=timeout)


async def activities(
    settings: Settings, matches: Callable[[dict[str, Any]], bool], count: int, timeout: float = 15
) -> list[dict[str, Any]]:
    """The `lead.activity` events that `matches`, once at least `count` of them arrived."""
    consumer = AIOKafkaConsumer(
        settings.topic(LEAD_ACTIVITY),
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    found: list[dict[str, Any]] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(found) < count and loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    event = json.loads(record.value)
                    if matches(event):
                        found.append(event)
    finally:
        await consumer.stop()
    assert len(found) >= count, f"{len(found)} of {count} events arrived: {found}"
    return found


def html(title: str, head: str, body: str = "") -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>{head}</head>"
        f"<body><h1>{title}</h1>{body}</body></html>"
    )


# --- Segment analytics.js 2.0 -------------------------------------------------------------


@pytest.mark.parametrize("mode", ["standard", "batching"])
async def test_segment_analytics_js(mode: str, stack: Stack, browser: Browser) -> None:
    """Only `cdnURL` points at leadflow: analytics.js reads its settings there
    (`/v1/projects/KEY/settings`), which send events back to leadflow's `/v1`."""
    delivery = (
        '{"Segment.io": {"deliveryStrategy": {"strategy": "batching", '
        '"config": {"size": 10, "timeout": 200}}}}'
        if mode == "batching"
        else "{}"
    )
    stack.pages[f"segment-{mode}"] = html(
        "Pricing",
        f"""<script src="/sdk/segment.js"></script>
<script>
  window.analytics = AnalyticsBrowser.load(
    {{writeKey: "{WRITE_KEY}", cdnURL: "{stack.gateway}"}}, {{integrations: {delivery}}});
</script>""",
    )
    email = visitor(f"segment-{mode}")
    async with browser.page() as page:
        await page.navigate(f"{stack.site}/segment-{mode}/pricing?utm_source=newsletter")
        user_agent = await page.evaluate("navigator.userAgent")
        await page.evaluate(
            f"""(async () => {{
              await analytics.identify("seg-{mode}-{email[:14]}", {{email: "{email}",
                  firstName: "Dana", company: "Initech"}});
              await analytics.page();
              await analytics.track("Webinar Attended", {{webinar: "Scoring 101"}});
              return true; }})()"""
        )
        lead, ledger = await lead_and_ledger(
            stack.runtime, email, {"pricing-page-view", "webinar-attendance"}
        )
    assert "HeadlessChrome" not in user_agent
    assert lead["attributes"]["first_name"] == "Dana"
    assert lead["attributes"]["company"] == "Initech"
    identities = set(lead["identities"])
    assert any(key.startswith("anon:") for key in identities)
    events = await activities(
        stack.runtime.settings, lambda event: event["subject"] in identities, 3
    )
    channels = {event["data"]["channel"] for event in events}
    expected = {"http:/v1/b"} if mode == "batching" else {"http:/v1/i", "http:/v1/p", "http:/v1/t"}
    assert channels == expected
    assert all(event["data"]["is_bot"] is False for event in events)
    assert {line["event_id"] for line in ledger} <= {event["id"] for event in events}


# --- RudderStack JavaScript SDK v3 ------------------------------------------------------------


@pytest.mark.parametrize("delivery", ["xhr", "beacon"])
async def test_rudderstack_js_sdk_v3(delivery: str, stack: Stack, browser: Browser) -> None:
    """`dataPlaneUrl` and `configUrl` point at leadflow: the SDK reads its source
    configuration from `/sourceConfig`, and delivers with XHR (basic auth, the AnonymousId and
    SentAt headers, so a CORS preflight) or with sendBeacon to `/beacon/v1/batch?writeKey=`."""
    stack.pages[f"rudderstack-{delivery}"] = html(
        "Pricing",
        f"""<script src="/sdk/rudderstack.js"></script>
<script>
  window.rudderanalytics = new RudderAnalytics();
  rudderanalytics.load("{WRITE_KEY}", "{stack.gateway}", {{
    configUrl: "{stack.gateway}",
    useBeacon: {str(delivery == "beacon").lower()},
    beaconQueueOptions: {{flushQueueInterval: 200}},
    logLevel: "WARN"
  }});
  rudderanalytics.ready(() => {{ window.rudderReady = true; }});
</script>""",
    )
    email = visitor(f"rudderstack-{delivery}")
    async with browser.page() as page:
        await page.navigate(f"{stack.site}/rudderstack-{delivery}/pricing?utm_source=ads")
        await page.wait_for("window.rudderReady === true")
        await page.evaluate(
            f"""rudderanalytics.identify("rs-{delivery}-{email[:16]}", {{email: "{email}",
                  firstName: "Dana", company: "Initech"}});
                rudderanalytics.page();
                rudderanalytics.track("Webinar Attended", {{webinar: "Scoring 101"}});
                true"""
        )
        lead, _ = await lead_and_ledger(
            stack.runtime, email, {"pricing-page-view", "webinar-attendance"}
        )
    assert lead["attributes"]["first_name"] == "Dana"
    identities = set(lead["identities"])
    events = await activities(
        stack.runtime.settings, lambda event: event["subject"] in identities, 3
    )
    channels = {event["data"]["channel"] for event in events}
    if delivery == "beacon":
        assert channels == {"http:/beacon/v1/batch"}
    else:
        assert channels == {"http:/v1/identify", "http:/v1/page", "http:/v1/track"}
    page_view = next(event for event in events if event["type"] == "lead.activity.page_view")
    assert page_view["data"]["properties"]["url"].endswith("/pricing?utm_source=ads")
    assert page_view["data"]["context"]["library"]["name"] == "RudderLabs JavaScript SDK"
    assert all(event["data"]["is_bot"] is False for event in events)


# --- Snowplow browser tracker -------------------------------------------------------------


async def test_snowplow_browser_tracker(stack: Stack, browser: Browser) -> None:
    """Only the collector URL points at leadflow, and the app id is configured
    (LEADFLOW_SNOWPLOW_APPS). Page view, page pings, a link click and a tracked form with an
    email field; the form is a demo request, so the lead qualifies."""
    tracker = f"""<script src="/sdk/snowplow.js"></script>
<script>
  snowplow.newTracker("sp1", "{stack.gateway}", {{
    appId: "{SNOWPLOW_APP}",
    plugins: [snowplow.FormTrackingPlugin(), snowplow.LinkClickTrackingPlugin()],
  }});
  snowplow.enableActivityTracking({{minimumVisitLength: 1, heartbeatDelay: 1}});
  snowplow.enableFormTracking();
  snowplow.enableLinkClickTracking();
  snowplow.trackPageView();
</script>"""
    # the site's every page has the tracker: what the browser could not send before it left
    # a page (the form's submission) is sent from the tracker's queue on the next one
    stack.pages["snowplow/thanks"] = html("Thanks", tracker)
    stack.pages["snowplow"] = html(
        "Pricing",
        tracker
        + """<script>
  snowplow.trackStructEvent({category: "webinar", action: "register", label: "Scoring 101"});
</script>""",
        """<a id="guide" href="#guide">Buyer's guide</a>
<form id="demo-request" action="thanks" method="get">
  <input type="email" name="email"> <input name="first_name"> <input name="company">
  <button type="submit">Ask for a demo</button>
</form>""",
    )
    email = visitor("snowplow")
    async with browser.page() as page:
        await page.navigate(f"{stack.site}/snowplow/pricing?utm_source=newsletter")
        await page.wait_for("document.cookie.includes('_sp_id')")
        domain_user_id = await page.evaluate(
            "document.cookie.split('; ').find(c => c.startsWith('_sp_id')).split('=')[1]"
            ".split('.')[0]"
        )
        for _ in range(12):  # a visitor reading: page pings after the minimum visit (1 s)
            await page.call("Input.dispatchMouseEvent", type="mouseMoved", x=40, y=40 + _)
            await asyncio.sleep(0.2)
        await page.evaluate("document.getElementById('guide').click(); true")
        await page.evaluate(
            f"""document.querySelector("input[name=email]").value = "{email}";
               document.querySelector("input[name=first_name]").value = "Dana";
               document.querySelector("input[name=company]").value = "Initech";
               document.querySelector("button").click(); true"""
        )
        await page.wait_for("location.pathname.endsWith('/thanks')")
        lead, _ = await lead_and_ledger(
            stack.runtime,
            email,
            {"pricing-page-view", "webinar-registration", "form-submission"},
        )
    assert lead["stage"] == "mql"  # the demo-request trigger
    assert lead["attributes"]["first_name"] == "Dana"
    assert f"anon:{domain_user_id}" in lead["identities"]

    def ours(event: dict[str, Any]) -> bool:
        return bool(event["data"]["identity"].get("anonymous_id") == domain_user_id)

    events = await activities(stack.runtime.settings, ours, 5)
    by_name: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_name.setdefault(event["data"]["event_name"], []).append(event)
    assert {"page_view", "page_ping", "register", "Link Click", "submit_form"} <= set(by_name)
    page_view = by_name["page_view"][0]
    assert page_view["source"] == "leadflow/gateway/snowplow/website"
    assert page_view["data"]["channel"] == "snowplow:/com.snowplowanalytics.snowplow/tp2"
    assert page_view["data"]["properties"]["title"] == "Pricing"
    assert page_view["data"]["properties"]["utm_source"] == "newsletter"
    assert page_view["data"]["context"]["campaign"] == {"source": "newsletter"}
    assert page_view["data"]["is_bot"] is False
    ping = by_name["page_ping"][0]
    assert (
        ping["data"]["properties"]["page_view_id"]
        == page_view["data"]["properties"]["page_view_id"]
    )
    assert by_name["Link Click"][0]["data"]["properties"]["target_url"].endswith("#guide")
    # a request cut short by leaving the page is sent again from the next page: the same eid,
    # so one event downstream
    assert len({event["id"] for event in by_name["submit_form"]}) == 1
    form = by_name["submit_form"][0]
    assert form["type"] == "lead.activity.form_submit"
    assert form["subject"] == f"email:{email}"
    assert form["data"]["properties"]["form"] == "demo-request"
    assert form["data"]["attributes"] == {"first_name": "Dana", "company": "Initech"}
    assert by_name["register"][0]["type"] == "lead.activity.webinar_register"


# --- leadflow.js and the pixel --------------------------------------------------------------


def leadflow_site(gateway: str) -> FastAPI:
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


async def test_leadflow_js_and_the_pixel_reach_lead_activity(
    browser: Browser, broker: EmbeddedBroker, sqlite_url: str, tmp_path: Path, clock: ManualClock
) -> None:
    """Its page views, a CORS-preflighted call, an identify and form submission on submit, and
    the time on page sent with navigator.sendBeacon when the page is left. Headless Chromium's
    own user agent, which the gateway flags (and still records)."""
    async with contextlib.AsyncExitStack() as stack:
        site_app_ = FastAPI()
        site_url = await stack.enter_async_context(serving(site_app_))
        settings = gateway_settings(broker.bootstrap, sqlite_url, tmp_path).model_copy(
            update={"cors_origins": [site_url]}
        )
        runtime: Runtime = await stack.enter_async_context(running_gateway(settings, clock))
        gateway_url = await stack.enter_async_context(serving(runtime.app))
        site_app_.router.routes.extend(leadflow_site(gateway_url).router.routes)
        page: Session = await stack.enter_async_context(browser.page(user_agent=None))

        await page.call("Page.navigate", url=f"{site_url}/pricing?utm_source=newsletter")
        await page.wait_for("window.leadflow && window.leadflow.loaded === true")
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
