"""Bot and prefetch detection (pure). Flagged events are still published, with `is_bot` set and
`context.bot_reason` saying why (services.gateway.clean.activity_event marks them); scoring
skips them, and nothing is silently dropped. Every way in asks `detect`."""

from __future__ import annotations

import re
from datetime import datetime

from schemas.events import ActivityType

CRAWLER = re.compile(
    r"bot\b|bot/|crawl|spider|slurp|facebookexternalhit|embedly|preview|mediapartners"
    r"|bingpreview|pingdom|uptimerobot|lighthouse|pagespeed",
    re.IGNORECASE,
)
HEADLESS = re.compile(r"headlesschrome|phantomjs|electron/.*headless", re.IGNORECASE)
EMAIL_SCANNER = re.compile(
    r"barracuda|mimecast|proofpoint|messagelabs|symantec|trendmicro|forcepoint|ironport"
    r"|safelinks|appriver|sophos|cisco|zscaler|linkscanner",
    re.IGNORECASE,
)


def user_agent_reason(user_agent: object) -> str | None:
    """Why this user agent is a machine (crawler, headless browser, email scanner), if it is."""
    if not isinstance(user_agent, str) or not user_agent:
        return None
    if EMAIL_SCANNER.search(user_agent):
        return "email_scanner_user_agent"
    if HEADLESS.search(user_agent):
        return "headless_browser"
    if CRAWLER.search(user_agent):
        return "crawler_user_agent"
    return None


def scanner_click_reason(
    clicked_at: datetime, delivered_at: datetime | None, threshold_seconds: float
) -> str | None:
    """A click within seconds of the email's delivery is a security scanner following links."""
    if delivered_at is None or threshold_seconds <= 0:
        return None
    elapsed = (clicked_at - delivered_at).total_seconds()
    if 0 <= elapsed < threshold_seconds:
        return f"click_{int(elapsed)}s_after_delivery"
    return None


def first_reason(*reasons: str | None) -> str | None:
    return next((reason for reason in reasons if reason), None)


def detect(
    *,
    flagged: str | None,
    user_agent: object,
    activity_type: ActivityType,
    time: datetime,
    delivered_at: datetime | None,
    scanner_seconds: float,
) -> str | None:
    """Why an activity is machine traffic, or None: what the way in found itself (`flagged`:
    a HEAD request on the pixel, the tool's own bot flag) first, then the user agent, then an
    email click too soon after the email's delivery."""
    scanner = (
        scanner_click_reason(time, delivered_at, scanner_seconds)
        if activity_type is ActivityType.EMAIL_CLICK
        else None
    )
    return first_reason(flagged, user_agent_reason(user_agent), scanner)
