"""Calendar feeds (RFC 5545), read back with icalendar and expanded with recurring_ical_events."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import recurring_ical_events
from icalendar import Calendar

from tests.conftest import Api
from tests.test_api_events import make_event
from tests.test_api_milestones import make_milestone
from tests.test_api_processes import instantiate, make_process

NY = "America/New_York"


async def feed(api: Api, url: str, auth: bool = False) -> Calendar:
    r = await api.client.get(url, headers=api.auth if auth else None)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/calendar; charset=utf-8"
    assert r.content.startswith(b"BEGIN:VCALENDAR\r\n")
    assert r.content.rstrip().endswith(b"END:VCALENDAR")
    cal = Calendar.from_ical(r.content)
    assert cal["VERSION"] == "2.0"
    assert str(cal["PRODID"])
    return cal


def vevents(cal: Calendar) -> dict[str, Any]:
    """The calendar's VEVENTs by UID."""
    events = {str(c["UID"]): c for c in cal.walk("VEVENT")}
    assert len(events) == len(cal.walk("VEVENT")), "UIDs must be unique"
    return events


def uid(item: dict[str, Any]) -> str:
    return f"{item['uid']}@forum-scheduler"


def tzids_used(cal: Calendar) -> set[str]:
    used = set()
    for component in cal.walk("VEVENT"):
        for name in ("DTSTART", "DTEND", "EXDATE"):
            values = component.get(name)
            for value in values if isinstance(values, list) else [values]:
                if value is not None and "TZID" in value.params:
                    used.add(str(value.params["TZID"]))
    return used


def assert_timezones_defined(cal: Calendar) -> None:
    defined = {str(tz["TZID"]) for tz in cal.walk("VTIMEZONE")}
    used = tzids_used(cal)
    assert used, "times should carry a TZID"
    assert used <= defined
    for tz in cal.walk("VTIMEZONE"):
        assert tz.walk("STANDARD") or tz.walk("DAYLIGHT")


async def test_process_feed_is_valid_icalendar(api: Api) -> None:
    pid = await make_process(api)
    created = await instantiate(api, pid)
    events: list[dict[str, Any]] = created["events"]  # type: ignore[assignment]
    milestones: list[dict[str, Any]] = created["milestones"]  # type: ignore[assignment]
    r = await api.client.get(f"/api/processes/{pid}/calendar.ics")
    assert r.headers["content-disposition"] == 'inline; filename="gcm.ics"'
    cal = await feed(api, f"/api/processes/{pid}/calendar.ics")
    assert str(cal["X-WR-CALNAME"]) == "GCM review"
    assert str(cal["METHOD"]) == "PUBLISH"
    by_uid = vevents(cal)
    assert set(by_uid) == {uid(e) for e in events} | {uid(m) for m in milestones}
    assert_timezones_defined(cal)
    # The regional reviews bring their own zones.
    assert {"America/New_York", "Europe/Zurich", "Asia/Bangkok", "America/Santiago"} <= (
        tzids_used(cal)
    )
    for event in events:
        component = by_uid[uid(event)]
        assert str(component["SUMMARY"]) == event["title"]
        start = component.decoded("DTSTART")
        end = component.decoded("DTEND")
        assert str(component["DTSTART"].params["TZID"]) == event["time_zone"]
        assert start == datetime.fromisoformat(event["start"])
        assert end == datetime.fromisoformat(event["end"])
        assert start.isoformat() == event["start_local"]
        assert int(component["SEQUENCE"]) == event["sequence"]
        assert str(component["STATUS"]) == "CONFIRMED"
        assert str(component["URL"]).endswith(f"/events/{event['id']}")
        assert component.decoded("DTSTAMP").tzinfo is not None
    for milestone in milestones:
        component = by_uid[uid(milestone)]
        assert component.decoded("DTSTART") == datetime.fromisoformat(milestone["due"])
        assert "DTEND" not in component
        assert str(component["TRANSP"]) == "TRANSPARENT"
    dialogue = next(e for e in events if e["kind"] == "dialogue_meeting")
    rule = by_uid[uid(dialogue)]["RRULE"]
    assert rule["FREQ"] == ["YEARLY"] and rule["COUNT"] == [4]


async def test_event_feed_holds_the_event_and_its_children(api: Api) -> None:
    pid = await make_process(api)
    forum = await make_event(
        api,
        pid,
        kind="review_forum",
        title="Forum",
        venue="General Assembly Hall",
        online_url="https://webtv.un.org/forum",
        description="Opening; round tables; plenary.",
        start="2030-05-14T10:00:00-04:00",
        end="2030-05-17T18:00:00-04:00",
    )
    child = await make_event(
        api,
        pid,
        kind="round_table",
        title="Round table 1",
        parent_id=forum["id"],
        start="2030-05-14T10:00:00-04:00",
        end="2030-05-14T13:00:00-04:00",
    )
    draft_child = await make_event(
        api,
        pid,
        kind="round_table",
        title="Round table 2",
        parent_id=forum["id"],
        status="draft",
    )
    unrelated = await make_event(api, pid, title="Unrelated")
    r = await api.client.get(forum["calendar_url"])
    assert r.headers["content-disposition"] == f'inline; filename="event-{forum["id"]}.ics"'
    public = vevents(await feed(api, forum["calendar_url"]))
    assert set(public) == {uid(forum), uid(child)}
    main = public[uid(forum)]
    assert str(main["LOCATION"]) == "General Assembly Hall, https://webtv.un.org/forum"
    assert str(main["DESCRIPTION"]) == "Opening; round tables; plenary."
    organizer = vevents(await feed(api, forum["calendar_url"], auth=True))
    assert set(organizer) == {uid(forum), uid(child), uid(draft_child)}
    assert uid(unrelated) not in organizer
    # A draft's own feed is hidden from the public like the draft itself.
    assert (await api.client.get(draft_child["calendar_url"])).status_code == 404
    assert (await api.client.get("/api/processes/999/calendar.ics")).status_code == 404


async def test_uid_is_stable_and_sequence_grows_with_every_change(api: Api) -> None:
    pid = await make_process(api)
    forum = await make_event(api, pid, title="Forum")
    hearing = await make_event(
        api, pid, title="Hearing", relative_to_id=forum["id"], placement={"days": -1}
    )
    deadline = await make_milestone(
        api, pid, relative_to_id=forum["id"], placement={"weeks": -2, "at": "23:59"}
    )
    url = f"/api/processes/{pid}/calendar.ics"
    before = vevents(await feed(api, url))
    assert {int(before[uid(x)]["SEQUENCE"]) for x in (forum, hearing, deadline)} == {0}

    r = await api.client.post(
        f"/api/events/{forum['id']}/move",
        json={"start": "2030-03-12T10:00:00-04:00"},
        headers=api.auth,
    )
    assert r.status_code == 200, r.text
    moved = vevents(await feed(api, url))
    assert set(moved) == set(before)
    for item in (forum, hearing, deadline):
        assert int(moved[uid(item)]["SEQUENCE"]) == 1
    assert moved[uid(forum)].decoded("DTSTART") == datetime(2030, 3, 12, 14, tzinfo=UTC)
    assert moved[uid(hearing)].decoded("DTSTART") == datetime(2030, 3, 11, 14, tzinfo=UTC)
    assert moved[uid(deadline)].decoded("DTSTART") == datetime(2030, 2, 27, 4, 59, tzinfo=UTC)

    r = await api.client.patch(
        f"/api/events/{forum['id']}", json={"venue": "Conference Room 2"}, headers=api.auth
    )
    assert r.status_code == 200
    r = await api.client.patch(
        f"/api/milestones/{deadline['id']}", json={"title": "Pledges due"}, headers=api.auth
    )
    assert r.status_code == 200
    changed = vevents(await feed(api, url))
    assert int(changed[uid(forum)]["SEQUENCE"]) == 2
    assert str(changed[uid(forum)]["LOCATION"]) == "Conference Room 2"
    assert int(changed[uid(deadline)]["SEQUENCE"]) == 2
    assert str(changed[uid(deadline)]["SUMMARY"]) == "Pledges due"
    assert int(changed[uid(hearing)]["SEQUENCE"]) == 1  # untouched this time
    # The one-event feed carries the same UID and SEQUENCE.
    single = vevents(await feed(api, forum["calendar_url"]))
    assert int(single[uid(forum)]["SEQUENCE"]) == 2


async def test_cancelled_and_postponed_events_stay_in_the_feed(api: Api) -> None:
    pid = await make_process(api)
    event = await make_event(api, pid, title="Round table")
    postponed = await make_event(api, pid, title="Policy debate", status="postponed")
    deadline = await make_milestone(api, pid, title="Pledges due", status="cancelled")
    r = await api.client.patch(
        f"/api/events/{event['id']}", json={"status": "cancelled"}, headers=api.auth
    )
    assert r.status_code == 200, r.text
    for url in (f"/api/processes/{pid}/calendar.ics", event["calendar_url"]):
        component = vevents(await feed(api, url))[uid(event)]
        assert str(component["STATUS"]) == "CANCELLED"
        assert int(component["SEQUENCE"]) == event["sequence"] + 1
    by_uid = vevents(await feed(api, f"/api/processes/{pid}/calendar.ics"))
    assert str(by_uid[uid(postponed)]["STATUS"]) == "TENTATIVE"
    assert str(by_uid[uid(postponed)]["SUMMARY"]) == "Postponed: Policy debate"
    assert str(by_uid[uid(deadline)]["STATUS"]) == "CANCELLED"


async def test_drafts_are_only_in_the_organizers_feed(api: Api) -> None:
    pid = await make_process(api)
    created = await instantiate(api, pid, status="draft")
    published = await make_event(api, pid, title="Published briefing")
    url = f"/api/processes/{pid}/calendar.ics"
    public = vevents(await feed(api, url))
    assert set(public) == {uid(published)}
    mine = vevents(await feed(api, url, auth=True))
    events: list[dict[str, Any]] = created["events"]  # type: ignore[assignment]
    milestones: list[dict[str, Any]] = created["milestones"]  # type: ignore[assignment]
    assert set(mine) == {uid(published)} | {uid(x) for x in events + milestones}
    # Another organizer sees only what the public sees.
    stranger = await api.new_token("Another secretariat")
    r = await api.client.get(url, headers={"Authorization": f"Bearer {stranger}"})
    assert set(vevents(Calendar.from_ical(r.content))) == {uid(published)}
    # An empty feed is still a valid calendar.
    empty = await make_process(api, "empty")
    cal = await feed(api, f"/api/processes/{empty}/calendar.ics")
    assert cal.walk("VEVENT") == []


async def test_weekly_series_keeps_local_time_across_dst(api: Api) -> None:
    """10:00 New York every Tuesday of 2027: 15:00Z in winter, 14:00Z in summer."""
    pid = await make_process(api)
    series = await make_event(
        api,
        pid,
        kind="dialogue_meeting",
        title="Weekly coordination call",
        start="2027-02-02T10:00:00-05:00",
        end="2027-02-02T11:00:00-05:00",
        rrule="FREQ=WEEKLY;BYDAY=TU;UNTIL=20271214",
        exdates=["2027-07-06T10:00:00-04:00", "2027-11-09T10:00:00-05:00"],
    )
    assert series["exdates"] == ["2027-07-06T14:00:00Z", "2027-11-09T15:00:00Z"]
    cal = await feed(api, series["calendar_url"])
    assert_timezones_defined(cal)
    component = vevents(cal)[uid(series)]
    assert str(component["DTSTART"].params["TZID"]) == NY
    exdates = component["EXDATE"]
    exdate_values = [
        d.dt for x in (exdates if isinstance(exdates, list) else [exdates]) for d in x.dts
    ]
    assert sorted(d.astimezone(UTC) for d in exdate_values) == [
        datetime(2027, 7, 6, 14, tzinfo=UTC),
        datetime(2027, 11, 9, 15, tzinfo=UTC),
    ]
    # The UNTIL was stored in UTC, as RFC 5545 wants with a TZID start.
    until = component["RRULE"]["UNTIL"][0]
    assert until.tzinfo is not None and until.utcoffset().total_seconds() == 0

    window = (datetime(2027, 1, 1, tzinfo=UTC), datetime(2028, 1, 1, tzinfo=UTC))
    expanded = recurring_ical_events.of(cal).between(*window)
    instants = sorted(e.decoded("DTSTART").astimezone(UTC) for e in expanded)
    assert instants[0] == datetime(2027, 2, 2, 15, tzinfo=UTC)
    assert instants[-1] == datetime(2027, 12, 14, 15, tzinfo=UTC)
    # 46 Tuesdays from 2 February to 14 December, less the two EXDATEs.
    assert len(instants) == 44
    assert datetime(2027, 3, 9, 15, tzinfo=UTC) in instants  # last winter Tuesday
    assert datetime(2027, 3, 16, 14, tzinfo=UTC) in instants  # first summer Tuesday
    assert datetime(2027, 11, 2, 14, tzinfo=UTC) in instants  # last summer Tuesday
    assert datetime(2027, 11, 16, 15, tzinfo=UTC) in instants  # winter again
    assert datetime(2027, 7, 6, 14, tzinfo=UTC) not in instants
    assert datetime(2027, 11, 9, 15, tzinfo=UTC) not in instants
    for instant in instants:
        local = instant.astimezone(component.decoded("DTSTART").tzinfo)
        assert (local.hour, local.minute, local.weekday()) == (10, 0, 1)
        summer = (
            datetime(2027, 3, 14, 7, tzinfo=UTC) <= instant < datetime(2027, 11, 7, 6, tzinfo=UTC)
        )
        assert instant.hour == (14 if summer else 15)
    for occurrence in expanded:
        length = occurrence.decoded("DTEND") - occurrence.decoded("DTSTART")
        assert length.total_seconds() == 3600

    # The app's own timeline gives exactly the same instants.
    r = await api.client.get(
        f"/api/processes/{pid}/timeline",
        params={"from": window[0].isoformat(), "to": window[1].isoformat()},
    )
    assert r.status_code == 200, r.text
    items = [i for i in r.json()["items"] if i["id"] == series["id"]]
    assert all(i["recurring"] for i in items)
    assert [datetime.fromisoformat(i["start"]) for i in items] == instants
    assert {i["start_local"][10:] for i in items} == {"T10:00:00-05:00", "T10:00:00-04:00"}
