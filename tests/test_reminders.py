# ruff: noqa: RUF001 (expected texts keep the typography of each language)
"""Reminder rules without a database: due times (across DST), dedupe keys, basis, usefulness,
digest grouping, policy resolution, the send-time verdict, and the mails they become.

Offsets are absolute durations: "7 days before" is 7 x 24 real hours before the start, even
across a change of the clocks (so the wall-clock time of the reminder moves by the hour).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import pytest
from icalendar import Calendar

from scheduler.mail_render import render
from scheduler.models import Event, Milestone, Notification
from scheduler.reminder_checks import Facts, verdict
from scheduler.reminders import (
    DEFAULT_OFFSETS,
    Pending,
    Person,
    Policy,
    dedupe_key,
    default_policy,
    digest_groups,
    event_basis,
    event_reminders,
    milestone_basis,
    milestone_reminders,
    plan,
    registrant_audience,
    resolve_policy,
    still_useful,
)
from scheduler.timezones import to_local

NOW = datetime(2030, 3, 1, 12, 0, tzinfo=UTC)
START = datetime(2030, 5, 12, 14, 0, tzinfo=UTC)  # 10:00 in New York (EDT)
FROM = "Forum Scheduler <noreply@forum.example.org>"
AMINA = Person("registration", 7, "amina@example.org", "Amina Diallo", "en", "Africa/Dakar")


def make_event(**changes: Any) -> Event:
    values: dict[str, Any] = {
        "id": 3,
        "uid": "5b0c1f7e-0000-4000-8000-000000000003",
        "process_id": 1,
        "kind": "stakeholder_hearing",
        "title": "Informal multi-stakeholder hearing",
        "description": "",
        "venue": "Conference Room 4",
        "online_url": "",
        "time_zone": "America/New_York",
        "starts_at": START,
        "ends_at": START + timedelta(hours=7),
        "status": "published",
        "rrule": None,
        "exdates": [],
        "sequence": 4,
        "reminder_offsets": None,
        "created_at": NOW,
        "updated_at": NOW,
    }
    values.update(changes)
    return Event(**values)


def make_milestone(**changes: Any) -> Milestone:
    values: dict[str, Any] = {
        "id": 9,
        "process_id": 1,
        "kind": "report_deadline",
        "title": "Submissions for the progress report",
        "due_at": datetime(2030, 4, 1, 21, 59, tzinfo=UTC),
        "time_zone": "America/New_York",
        "status": "published",
        "sequence": 2,
        "reminder_offsets": None,
    }
    values.update(changes)
    return Milestone(**values)


# --- Due times ----------------------------------------------------------------------------


def test_default_offsets_are_a_week_a_day_and_an_hour_earliest_first() -> None:
    assert DEFAULT_OFFSETS == (10080, 1440, 60)
    assert plan(START, DEFAULT_OFFSETS, NOW) == [
        (10080, START - timedelta(days=7)),
        (1440, START - timedelta(days=1)),
        (60, START - timedelta(hours=1)),
    ]
    # Given in any order, repeated or not, the answer is the same.
    assert plan(START, [60, 10080, 1440, 60], NOW) == plan(START, DEFAULT_OFFSETS, NOW)


def test_offsets_already_past_at_planning_time_are_dropped() -> None:
    two_days_before = START - timedelta(days=2)
    assert plan(START, DEFAULT_OFFSETS, two_days_before) == [
        (1440, START - timedelta(days=1)),
        (60, START - timedelta(hours=1)),
    ]
    # A reminder due exactly now is kept (it goes out at once); one a second ago is not.
    exactly = START - timedelta(days=1)
    assert [o for o, _ in plan(START, DEFAULT_OFFSETS, exactly)] == [1440, 60]
    assert [o for o, _ in plan(START, DEFAULT_OFFSETS, exactly + timedelta(seconds=1))] == [60]
    assert plan(START, DEFAULT_OFFSETS, START) == []
    assert plan(START, DEFAULT_OFFSETS, START + timedelta(days=1)) == []
    with pytest.raises(ValueError):
        plan(START.replace(tzinfo=None), DEFAULT_OFFSETS, NOW)


def test_offsets_are_absolute_durations_across_the_march_change() -> None:
    # 10:00 in New York on Tuesday 12 March 2030, two days after the clocks went forward
    # (Sunday 10 March): 14:00 UTC. The 7-day reminder is 7 x 24 real hours earlier,
    # 14:00 UTC on 5 March, which New York still reads as 09:00 (EST): the wall clock moves,
    # the duration does not.
    start = datetime(2030, 3, 12, 14, 0, tzinfo=UTC)
    assert to_local(start, "America/New_York").hour == 10
    due = dict(plan(start, DEFAULT_OFFSETS, NOW))
    assert due[10080] == datetime(2030, 3, 5, 14, 0, tzinfo=UTC)
    assert start - due[10080] == timedelta(hours=7 * 24)
    local = to_local(due[10080], "America/New_York")
    assert (local.hour, local.utcoffset()) == (9, timedelta(hours=-5))
    # "1 hour before" is sixty real minutes whatever the clocks do that night.
    night = datetime(2030, 3, 10, 7, 30, tzinfo=UTC)  # 03:30 EDT, just after the change
    (_, hour_before), *_ = plan(night, [60], NOW)
    assert night - hour_before == timedelta(hours=1)
    assert to_local(hour_before, "America/New_York").strftime("%H:%M %Z") == "01:30 EST"


# --- Keys, basis, usefulness --------------------------------------------------------------


def test_dedupe_keys_are_stable_and_distinct() -> None:
    key = dedupe_key("registrants", "r7", "e3", 60)
    assert key == dedupe_key("registrants", "r7", "e3", 60) == "reminder:registrants:r7:e3:60"
    others = {
        dedupe_key("speakers", "r7", "e3", 60),
        dedupe_key("registrants", "r8", "e3", 60),
        dedupe_key("registrants", "r7", "e4", 60),
        dedupe_key("registrants", "r7", "e3", 1440),
        dedupe_key("organizers", "o7", "e3", 60),
        dedupe_key("subscribers", "s7", "m3", 60),
    }
    assert key not in others and len(others) == 6
    assert len(dedupe_key("registrants", "r2147483647", "e2147483647", 525600)) <= 200
    # The rows planned for one person and event carry these keys: planning again finds them.
    rows = event_reminders(make_event(), default_policy("plenary"), AMINA, "registrants", NOW)
    assert [r.key for r in rows] == [
        "reminder:registrants:r7:e3:10080",
        "reminder:registrants:r7:e3:1440",
        "reminder:registrants:r7:e3:60",
    ]


def test_basis_names_the_start_the_sequence_and_a_speakers_slot() -> None:
    basis = event_basis(START, 4)
    assert basis == "2030-05-12T14:00:00Z#4"
    assert event_basis(START, 5) != basis
    assert event_basis(START + timedelta(minutes=30), 4) != basis
    slot = START + timedelta(minutes=40)
    assert event_basis(START, 4, slot) == "2030-05-12T14:00:00Z#4|slot 2030-05-12T14:40:00Z"
    assert milestone_basis(START, 2) == "2030-05-12T14:00:00Z#2"
    assert len(event_basis(START, 2**31 - 1, slot)) <= 100


def test_still_useful_until_the_start() -> None:
    due = START - timedelta(hours=1)
    assert still_useful(due, START, due)
    assert still_useful(due, START, START - timedelta(seconds=1))
    assert not still_useful(due, START, START)
    assert not still_useful(due, START, START + timedelta(minutes=5))


# --- Digest -------------------------------------------------------------------------------


def test_digest_groups_one_persons_reminders_within_an_hour() -> None:
    at = NOW
    rows = [
        Pending(1, "amina", at),
        Pending(2, "amina", at + timedelta(minutes=30)),
        Pending(3, "bola", at + timedelta(minutes=10)),
        Pending(4, "amina", at + timedelta(minutes=61)),
        Pending(5, "amina", at + timedelta(minutes=59)),
    ]
    groups = [[p.id for p in g] for g in digest_groups(rows, at)]
    assert groups == [[1, 2, 5], [3], [4]]


def test_digest_counts_overdue_reminders_as_due_now() -> None:
    # After an outage the reminders due at 08:00 and 09:55 both go out at 10:00, together
    # with the one due at 10:30.
    now = datetime(2030, 3, 1, 10, 0, tzinfo=UTC)
    rows = [
        Pending(1, "amina", now - timedelta(hours=2)),
        Pending(2, "amina", now - timedelta(minutes=5)),
        Pending(3, "amina", now + timedelta(minutes=30)),
        Pending(4, "amina", now + timedelta(minutes=90)),
    ]
    assert [[p.id for p in g] for g in digest_groups(rows, now)] == [[1, 2, 3], [4]]
    assert digest_groups([], now) == []


# --- Policies and audiences ---------------------------------------------------------------


def test_policy_resolution_event_then_process_then_defaults() -> None:
    assert default_policy("plenary") == Policy(
        DEFAULT_OFFSETS, ("registrants", "speakers", "organizers")
    )
    assert default_policy("milestone") == Policy(DEFAULT_OFFSETS, ("subscribers", "organizers"))
    stored = Policy((2880, 30), ("registrants",))
    assert resolve_policy("plenary", None, None) == default_policy("plenary")
    assert resolve_policy("plenary", None, stored) == stored
    # The item's own offsets win; who is reminded stays the policy's choice.
    assert resolve_policy("plenary", [120], stored) == Policy((120,), ("registrants",))
    assert resolve_policy("plenary", [], None).offsets == ()
    assert resolve_policy("milestone", [15], None) == Policy((15,), ("subscribers", "organizers"))


def test_speakers_get_the_speaker_variant_with_their_slot() -> None:
    everyone = default_policy("plenary")
    assert registrant_audience(everyone, speaking=True) == "speakers"
    assert registrant_audience(everyone, speaking=False) == "registrants"
    no_speakers = Policy(DEFAULT_OFFSETS, ("registrants", "organizers"))
    assert registrant_audience(no_speakers, speaking=True) == "registrants"
    assert registrant_audience(Policy(DEFAULT_OFFSETS, ("organizers",)), speaking=False) is None

    slot = (START + timedelta(minutes=40), START + timedelta(minutes=50))
    rows = event_reminders(make_event(), everyone, AMINA, "speakers", NOW, slot=slot)
    assert [(r.kind, r.offset) for r in rows] == [
        ("speaker_reminder", 10080),
        ("speaker_reminder", 1440),
        ("speaker_reminder", 60),
    ]
    assert rows[0].context["slot_start"] == slot[0].isoformat()
    assert rows[0].basis == event_basis(START, 4, slot[0])


def test_only_published_items_and_chosen_audiences_are_reminded() -> None:
    everyone = default_policy("plenary")
    for status in ("draft", "postponed", "cancelled"):
        assert event_reminders(make_event(status=status), everyone, AMINA, "registrants", NOW) == []
    organizers_only = Policy(DEFAULT_OFFSETS, ("organizers",))
    assert event_reminders(make_event(), organizers_only, AMINA, "registrants", NOW) == []
    sub = Person("subscription", 5, "li@example.org", "Li", "fr", "Europe/Paris")
    rows = milestone_reminders(
        make_milestone(), default_policy("milestone"), sub, "subscribers", NOW
    )
    assert [(r.kind, r.key, r.milestone_id) for r in rows][-1] == (
        "milestone_reminder",
        "reminder:subscribers:s5:m9:60",
        9,
    )
    assert milestone_reminders(make_milestone(status="draft"), default_policy("milestone"), sub,
                               "subscribers", NOW) == []  # fmt: skip


# --- The verdict at send time -------------------------------------------------------------


def reminder(**changes: Any) -> Notification:
    event = make_event()
    (row, *_) = [
        r
        for r in event_reminders(event, default_policy("plenary"), AMINA, "registrants", NOW)
        if r.offset == changes.get("offset_minutes", 60)
    ]
    values = row.columns(NOW) | {"id": 11}
    values.update(changes)
    return Notification(**values)


def facts(event: Event | None = None, registration_status: str = "confirmed") -> Facts:
    event = event or make_event()
    return Facts(events={event.id: event}, registrations={7: registration_status})


def test_verdict_sends_a_reminder_that_still_tells_the_truth() -> None:
    note = reminder()
    assert verdict(note, facts(), note.due_at) == ("send", "")
    # Late (the service was down) but before the start: still worth it.
    assert verdict(note, facts(), START - timedelta(minutes=1)) == ("send", "")


def test_verdict_cancels_a_reminder_whose_basis_changed() -> None:
    note = reminder()
    at = note.due_at
    assert verdict(note, facts(make_event(sequence=5)), at) == ("cancelled", "basis changed")
    moved = make_event(starts_at=START + timedelta(days=1))
    assert verdict(note, facts(moved), at) == ("cancelled", "basis changed")
    for status in ("cancelled", "postponed", "draft"):
        assert verdict(note, facts(make_event(status=status)), at) == (
            "cancelled",
            f"basis changed: the event is {status}",
        )
    assert verdict(note, Facts(registrations={7: "confirmed"}), at) == (
        "cancelled",
        "basis changed: the event no longer exists",
    )
    assert verdict(note, facts(registration_status="cancelled"), at) == (
        "cancelled",
        "the registration is cancelled",
    )


def test_verdict_skips_a_reminder_that_comes_too_late() -> None:
    note = reminder()
    assert verdict(note, facts(), START) == (
        "skipped",
        "came due while the service was down; the event had started",
    )
    deadline = make_milestone()
    sub = Person("subscription", 5, "li@example.org", "Li", "fr", "Europe/Paris")
    (row, *_) = milestone_reminders(deadline, default_policy("milestone"), sub, "subscribers", NOW)
    late = Notification(**(row.columns(NOW) | {"id": 12}))
    got = Facts(milestones={9: deadline}, subscriptions={5: "active"})
    assert verdict(late, got, deadline.due_at) == (
        "skipped",
        "came due while the service was down; the deadline had passed",
    )
    assert verdict(late, Facts(milestones={9: deadline}, subscriptions={5: "unsubscribed"}),
                   row.due_at) == ("cancelled", "unsubscribed")  # fmt: skip


# --- The mails ----------------------------------------------------------------------------


def mail(note: Notification, event: Event | None = None, **links: str) -> EmailMessage:
    msg = render(note, event=event, links=links, mail_from=FROM, now=note.due_at)
    parsed = message_from_bytes(msg.as_bytes(), policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def text_of(msg: EmailMessage) -> str:
    part = msg.get_body(("plain",))
    assert part is not None
    return str(part.get_content()).replace("\r\n", "\n")


@pytest.mark.parametrize(
    ("lang", "subject", "lead"),
    [
        ("en", "Reminder: Informal multi-stakeholder hearing", "starts in 1 hour."),
        ("fr", "Rappel\u00a0: Informal multi-stakeholder hearing", "commence dans 1 heure."),
        ("es", "Recordatorio: Informal multi-stakeholder hearing", "comienza dentro de 1 hora."),
        ("ar", "تذكير: Informal multi-stakeholder hearing", "تبدأ خلال ساعة واحدة."),
    ],
)
def test_event_reminder_in_four_languages(lang: str, subject: str, lead: str) -> None:
    note = reminder(language=lang)
    msg = mail(note, make_event(), manage_url="https://forum.example.org/registrations/7.x")
    assert " ".join(str(msg["Subject"]).split()) == " ".join(subject.split())
    text = text_of(msg)
    assert lead in text
    assert "https://forum.example.org/registrations/7.x" in text
    assert msg["List-Unsubscribe"] is None  # a registrant's reminder is not a list mail
    assert list(msg.iter_attachments()) == []


def test_a_late_reminder_says_how_long_is_really_left() -> None:
    note = reminder(offset_minutes=10080)
    msg = render(note, event=make_event(), links={}, mail_from=FROM, now=START - timedelta(days=2))
    text = text_of(message_from_bytes(msg.as_bytes(), policy=policy.default))  # type: ignore[arg-type]
    assert "starts in 2 days." in text


def test_speaker_reminder_shows_the_slot_in_both_zones() -> None:
    slot = (START + timedelta(minutes=40), START + timedelta(minutes=50))
    (row, *_) = event_reminders(
        make_event(), default_policy("plenary"), AMINA, "speakers", NOW, slot=slot
    )
    text = text_of(mail(Notification(**(row.columns(NOW) | {"id": 13})), make_event()))
    assert "you have the floor" in text
    # Dakar (UTC) first, then New York.
    assert "Your speaking slot: Sunday, May 12, 2030, 2:40\u202fPM – 2:50\u202fPM" in text
    assert "Local time at the event: Sunday, May 12, 2030, 10:40\u202fAM" in text


@pytest.mark.parametrize("lang", ["en", "fr", "es", "ar"])
def test_subscriber_mails_carry_one_click_unsubscribe(lang: str) -> None:
    sub = Person("subscription", 5, "li@example.org", "Li Wei", lang, "Europe/Paris")
    (row, *_) = milestone_reminders(
        make_milestone(), default_policy("milestone"), sub, "subscribers", NOW,
        process_name="GCM review",
    )  # fmt: skip
    note = Notification(**(row.columns(NOW) | {"id": 14}))
    links = {
        "manage_url": "https://forum.example.org/subscriptions/5.abc",
        "confirm_url": "https://forum.example.org/subscriptions/5.abc",
        "unsubscribe_url": "https://forum.example.org/api/subscriptions/5.abc/unsubscribe",
    }
    msg = mail(note, None, **links)
    # (A long header is folded before the URL; the parser keeps the fold's space.)
    assert str(msg["List-Unsubscribe"]).strip() == f"<{links['unsubscribe_url']}>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "Submissions for the progress report" in str(msg["Subject"])
    text = text_of(msg)
    assert links["manage_url"] in text and "GCM review" in text
    assert "{" not in text

    confirm = Notification(
        **(
            row.columns(NOW)
            | {"id": 15, "kind": "subscription_confirm", "dedupe_key": None}
            | {"context": {"process_name": "GCM review"}}
        )
    )
    msg = mail(confirm, None, **links)
    assert "GCM review" in str(msg["Subject"])
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert links["confirm_url"] in text_of(msg)


def test_milestone_reminder_in_english() -> None:
    sub = Person("subscription", 5, "li@example.org", "Li Wei", "en", "Europe/Paris")
    rows = milestone_reminders(
        make_milestone(), default_policy("milestone"), sub, "subscribers", NOW,
        process_name="GCM review",
    )  # fmt: skip
    week = Notification(**(rows[0].columns(NOW) | {"id": 16}))
    text = text_of(mail(week))
    assert (
        "This is a reminder of the following deadline: Submissions for the progress report, "
        "in 1 week." in text
    )
    # 21:59 UTC is 23:59 in Paris (summer time).
    assert "Due: Monday, April 1, 2030, 11:59\u202fPM (Central European Summer Time)" in text


def test_digest_lists_each_reminder_with_its_time() -> None:
    note = reminder(
        kind="reminder_digest",
        dedupe_key=None,
        context={
            "items": [
                {"title": "Round table 1", "start": "2030-05-12T14:00:00+00:00",
                 "end": "2030-05-12T15:00:00+00:00"},
                {"title": "Round table 2", "start": "2030-05-12T14:30:00+00:00",
                 "slot_start": "2030-05-12T14:40:00+00:00",
                 "slot_end": "2030-05-12T14:50:00+00:00"},
            ]
        },
    )  # fmt: skip
    msg = mail(note)
    assert str(msg["Subject"]) == "Your reminders: 2 coming up"
    text = text_of(msg)
    assert "Round table 1: Sunday, May 12, 2030, 2:00\u202fPM – 3:00\u202fPM" in text
    assert "Round table 2 (your speaking slot): Sunday, May 12, 2030, 2:40\u202fPM" in text


@pytest.mark.parametrize("kind", ["event_changed", "event_cancelled", "event_postponed"])
def test_change_notices_carry_the_current_calendar_entry(kind: str) -> None:
    status = {"event_changed": "published"}.get(kind, kind.removeprefix("event_"))
    event = make_event(status=status, sequence=7, starts_at=START + timedelta(days=2),
                       ends_at=START + timedelta(days=2, hours=7))  # fmt: skip
    note = reminder(kind=kind, dedupe_key=None, context={"event_title": event.title})
    msg = mail(note, event, event_url="https://forum.example.org/api/events/3")
    (ics,) = list(msg.iter_attachments())
    (vevent,) = Calendar.from_ical(ics.get_content()).walk("VEVENT")
    assert int(vevent["SEQUENCE"]) == 7
    assert vevent.decoded("DTSTART") == START + timedelta(days=2)
    expected = {"published": "CONFIRMED", "cancelled": "CANCELLED", "postponed": "TENTATIVE"}
    assert str(vevent["STATUS"]) == expected[status]
    assert event.title in str(msg["Subject"])
