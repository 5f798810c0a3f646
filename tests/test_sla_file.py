"""The SLA file: calendars, clocks and their targets, chosen by conditions on the lead; every
problem reported with its line and field, offline too (`leadflow sla check`)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from sla_monitor.lifecycle import ClockName
from sla_monitor.policy import PolicyError, load_policy, parse_policy_text
from tests.conftest import EXAMPLES, ROOT

MONDAY_10AM_NEW_YORK = datetime(2026, 11, 23, 15, tzinfo=UTC)
EXAMPLE = load_policy(EXAMPLES / "sla.yaml")


def test_the_example_file_keeps_the_four_business_hour_accept_clock() -> None:
    terms = EXAMPLE.terms_for(ClockName.ACCEPT, {"grade": "D3", "email": "dana@example.org"})
    assert terms is not None
    assert terms.policy == "accept-within-4-business-hours"
    assert terms.calendar.timezone == "America/New_York"
    deadline = terms.deadline(MONDAY_10AM_NEW_YORK)
    assert deadline == datetime(2026, 11, 23, 19, tzinfo=UTC)
    assert terms.warn_at(MONDAY_10AM_NEW_YORK, deadline) == datetime(2026, 11, 23, 18, tzinfo=UTC)
    assert terms.target.on_breach == "reassign"


def test_targets_are_chosen_by_the_first_condition_the_lead_meets() -> None:
    def policy(clock: ClockName, **facts: object) -> str | None:
        terms = EXAMPLE.terms_for(clock, facts)
        return None if terms is None else terms.policy

    hot = policy(ClockName.ACCEPT, grade="A2", trigger="Demo-Request")  # text ignores case
    assert hot == "hot-leads-accept-within-1-business-hour"
    assert policy(ClockName.ACCEPT, grade="B2", trigger="demo-request") == (
        "accept-within-4-business-hours"
    )
    assert policy(ClockName.ACCEPT, grade="A1", pool="emea") == (
        "emea-accept-within-4-business-hours"
    )
    emea = EXAMPLE.terms_for(ClockName.ACCEPT, {"pool": "EMEA"})
    assert emea is not None and emea.calendar.name == "london"
    assert policy(ClockName.FIRST_TOUCH) == "first-touch-within-1-business-day"
    assert policy(ClockName.QUALIFY) == "qualify-within-10-business-days"


def test_the_example_calendar_has_its_yearly_holidays() -> None:
    new_york = EXAMPLE.calendars["new-york"]
    for holiday in (date(2026, 11, 26), date(2027, 5, 31), date(2027, 9, 6), date(2026, 12, 24)):
        assert new_york.is_holiday(holiday), holiday
    assert not new_york.is_holiday(date(2027, 12, 24))  # 2026-12-24 was a one-off
    assert EXAMPLE.calendars["always"].always


def test_a_clock_left_out_does_not_run_and_a_lead_no_target_takes_has_none() -> None:
    policy = parse_policy_text(
        """
        clocks:
          accept:
            targets:
              - {name: only-a-leads, when: {grade: A}, within: 2h, warn_before: 50%}
        """
    )
    assert not policy.runs(ClockName.QUALIFY)
    assert policy.terms_for(ClockName.QUALIFY, {"grade": "A1"}) is None
    assert policy.terms_for(ClockName.ACCEPT, {"grade": "B1"}) is None
    terms = policy.terms_for(ClockName.ACCEPT, {"grade": "a3"})
    assert terms is not None and terms.calendar.always  # no calendar given: wall time
    start = datetime(2026, 11, 28, 22, tzinfo=UTC)  # a Saturday night counts on `always`
    assert terms.deadline(start) == start + timedelta(hours=2)
    assert terms.warn_at(start, terms.deadline(start)) == start + timedelta(hours=1)


BAD = """\
calendars:
  always:
    time_zone: UTC
    hours: {mon: "09:00-17:00"}
  office:
    time_zone: Mars/Olympus
    hours:
      mon-fri: "09:00-12:00, 11:00-17:00"
      sat: 9
    holidays: [someday]
clocks:
  accept:
    calendar: offfice
    targets:
      - name: everyone
        within: 4
      - name: everyone
        within: 4h
        warn_before: 5h
        on_breach: notify
  first_touch:
    targets:
      - name: catch-all
        within: 1d
      - name: never-reached
        within: 2d
        when: {grade: Z9}
  qualify:
    targets:
      - {name: q, within: 10d, on_breach: escalate, calendar: nowhere}
  follow_up:
    targets: [{name: f, within: 1h}]
"""


def test_a_bad_file_names_every_problem_with_its_line_and_field() -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy_text(BAD, "sla.yaml")
    message = str(caught.value)
    expected = [
        ("sla.yaml line 6: calendars.office.time_zone", "unknown time zone 'Mars/Olympus'"),
        ("sla.yaml line 8: calendars.office.hours.mon-fri", "11:00-17:00 overlaps 09:00-12:00"),
        ("sla.yaml line 9: calendars.office.hours.sat", "a range of hours is text"),
        ("sla.yaml line 10: calendars.office.holidays[0]", "'someday' is not a holiday"),
        ("sla.yaml line 16: clocks.accept.targets[0].within", "give its unit"),
        ("sla.yaml line 17: clocks.accept.targets[1]", "on_breach: notify needs `notify`"),
        ("sla.yaml line 27: clocks.first_touch.targets[1].when", "grade: 'Z9' is not a grade"),
        ("sla.yaml line 30: clocks.qualify.targets[0].on_breach", "'reassign'"),
        ("sla.yaml line 31: clocks.follow_up", "'accept', 'first_touch' or 'qualify'"),
    ]
    for where, what in expected:
        assert any(where in line and what in line for line in message.splitlines()), (
            where,
            message,
        )
    assert "at least 1 item" not in message  # items that failed are not reported twice
    assert {problem.field for problem in caught.value.problems} >= {
        "calendars.office.time_zone",
        "clocks.accept.targets[0].within",
    }


def test_what_only_the_whole_file_shows_is_reported_too() -> None:
    text = textwrap.dedent(
        """\
        calendars:
          always:
            time_zone: UTC
            hours: {mon: "09:00-17:00"}
        clocks:
          accept:
            calendar: offfice
            targets:
              - {name: everyone, within: 4h, warn_before: 5h}
              - name: everyone
                within: 4h
          qualify:
            targets:
              - {name: q, within: 10d, calendar: nowhere}
        """
    )
    with pytest.raises(PolicyError) as caught:
        parse_policy_text(text, "sla.yaml")
    lines = str(caught.value).splitlines()
    assert any(
        "line 9: clocks.accept.targets[0]" in line and "warn_before" in line for line in lines
    )
    with pytest.raises(PolicyError) as caught:
        parse_policy_text(text.replace(", warn_before: 5h", ""), "sla.yaml")
    lines = str(caught.value).splitlines()
    for where, what in [
        ("line 2: calendars.always", "'always' is built in"),
        ("line 7: clocks.accept.calendar", "unknown calendar 'offfice'"),
        ("line 10: clocks.accept.targets[1].name", "'everyone' is already used"),
        ("line 10: clocks.accept.targets[1]", "never used: targets[0] above has no `when`"),
        ("line 14: clocks.qualify.targets[0].calendar", "unknown calendar 'nowhere'"),
    ]:
        assert any(where in line and what in line for line in lines), (where, lines)


def test_an_empty_or_unreadable_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="empty"):
        parse_policy_text("# nothing\n", "sla.yaml")
    with pytest.raises(PolicyError, match="cannot read SLA file"):
        load_policy(tmp_path / "missing.yaml")
    with pytest.raises(PolicyError, match=r"sla\.yaml line 3: not valid YAML"):
        parse_policy_text("clocks:\n  accept: [\n", "sla.yaml")


def leadflow(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.launch.cli", *args],
        cwd=ROOT,
        text=True,
        capture_output=True,
        timeout=60,
    )


def test_sla_check_validates_a_file_offline(tmp_path: Path) -> None:
    good = leadflow("sla", "check", "examples/sla.yaml")
    assert good.returncode == 0, good.stderr
    assert "examples/sla.yaml: OK" in good.stdout
    assert "clock accept on new-york" in good.stdout
    broken = tmp_path / "sla.yaml"
    broken.write_text(BAD)
    bad = leadflow("sla", "check", str(broken))
    assert bad.returncode == 2
    assert f"{broken} line 16: clocks.accept.targets[0].within" in bad.stderr
    assert "line 31: clocks.follow_up" in bad.stderr
    assert "Traceback" not in bad.stderr
