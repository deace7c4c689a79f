"""Database tables. Times are stored in UTC and always come back time-zone aware."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Dialect,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

EVENT_KINDS = (
    "review_forum",
    "regional_review",
    "stakeholder_hearing",
    "dialogue_meeting",
    "consultation",
    "round_table",
    "policy_debate",
    "plenary",
    "other",
)
EVENT_STATUSES = ("draft", "published", "postponed", "cancelled")
MILESTONE_KINDS = (
    "report_deadline",
    "registration_deadline",
    "pledge_deadline",
    "decision",
    "other",
)
MILESTONE_STATUSES = ("draft", "published", "cancelled")
CONSTITUENCIES = (
    "civil_society",
    "migrant_organisation",
    "diaspora_organisation",
    "member_state",
    "un_entity",
    "academia",
    "private_sector",
    "trade_union",
    "nhri",
    "local_authority",
    "other",
)
# held: a seat kept for an unconfirmed person until hold_expires_at; confirmed: a seat;
# waiting: on the waiting list (FIFO by waitlist_seq); pending_approval: accreditation.
REGISTRATION_STATUSES = (
    "held",
    "confirmed",
    "waiting",
    "pending_approval",
    "rejected",
    "cancelled",
    "expired",
)
SEAT_STATUSES = ("held", "confirmed")
ACTIVE_STATUSES = ("held", "confirmed", "waiting", "pending_approval")
# The same, as the partial unique index on (event_id, email) states it. A query that repeats
# this very condition can use that index: the databases match an index's predicate against
# the query's text, and a list of bound values matches nothing.
ACTIVE_STATUS_SQL = "status IN ('held', 'confirmed', 'waiting', 'pending_approval')"
NOTIFICATION_STATUSES = ("planned", "sending", "sent", "failed", "skipped", "cancelled")


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out; naive values are refused, not guessed."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetime given to a UTC column")
        utc = value.astimezone(UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_uid() -> str:
    return str(uuid.uuid4())


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map = {
        datetime: UTCDateTime,
        dict[str, Any]: JSON,
        list[str]: JSON,
        list[int]: JSON,
    }


class ChangeCounter(Base):
    """A number bumped by every write to a family of tables.

    Readers compare it to decide whether a cached answer still holds; it lives in the
    database so that every node of a cluster sees the same number.
    """

    __tablename__ = "change_counters"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, default=0)


class Organizer(Base):
    """Someone who runs processes; they act through their API tokens (``ApiToken``)."""

    __tablename__ = "organizers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    # Where this organizer's reminders go (empty: none).
    email: Mapped[str] = mapped_column(String(320), default="")
    language: Mapped[str] = mapped_column(String(8), default="en")
    time_zone: Mapped[str] = mapped_column(String(64), default="UTC")
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


class Process(Base):
    """A review cycle, e.g. the Global Compact for Migration review."""

    __tablename__ = "processes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slug: Mapped[str] = mapped_column(String(80), unique=True)
    name: Mapped[str] = mapped_column(String(300))
    description: Mapped[str] = mapped_column(Text, default="")
    time_zone: Mapped[str] = mapped_column(String(64))
    languages: Mapped[list[str]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(default=utc_now, onupdate=utc_now)


class ProcessOrganizer(Base):
    """A member of a process and their role there: viewer, organizer or owner
    (``scheduler.permissions.ROLES``)."""

    __tablename__ = "process_organizers"

    process_id: Mapped[int] = mapped_column(
        ForeignKey("processes.id", ondelete="CASCADE"), primary_key=True
    )
    # Indexed on its own too: every authenticated request looks up the caller's processes.
    organizer_id: Mapped[int] = mapped_column(
        ForeignKey("organizers.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    role: Mapped[str] = mapped_column(String(20), default="organizer")


class ApiToken(Base):
    """One of an organizer's credentials. Only a SHA-256 of the secret is stored.

    A token may be narrower than its organizer: scoped to one process (``process_id``) it
    acts on nothing else, and a ``read_only`` one acts as at most a viewer.
    """

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    organizer_id: Mapped[int] = mapped_column(
        ForeignKey("organizers.id", ondelete="CASCADE"), index=True
    )
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(String(200), default="")
    process_id: Mapped[int | None] = mapped_column(
        ForeignKey("processes.id", ondelete="CASCADE"), index=True
    )
    read_only: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    # Kept roughly (updated at most once a minute), for spotting tokens nobody uses.
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class Event(Base):
    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_process_start", "process_id", "starts_at"),
        Index("ix_events_status_start", "status", "starts_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uid: Mapped[str] = mapped_column(String(36), unique=True, default=new_uid)
    process_id: Mapped[int] = mapped_column(ForeignKey("processes.id", ondelete="CASCADE"))
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("events.id", ondelete="SET NULL"), index=True
    )
    kind: Mapped[str] = mapped_column(String(40))
    title: Mapped[str] = mapped_column(String(300))
    description: Mapped[str] = mapped_column(Text, default="")
    venue: Mapped[str] = mapped_column(String(300), default="")
    online_url: Mapped[str] = mapped_column(String(2000), default="")
    time_zone: Mapped[str] = mapped_column(String(64))
    starts_at: Mapped[datetime]
    ends_at: Mapped[datetime]
    # End of the last occurrence (= ends_at without a rule; None for an endless series).
    series_ends_at: Mapped[datetime | None]
    status: Mapped[str] = mapped_column(String(20), default="draft")
    rrule: Mapped[str | None] = mapped_column(String(500))
    exdates: Mapped[list[str]] = mapped_column(default=list)
    registration_opens_at: Mapped[datetime | None]
    registration_closes_at: Mapped[datetime | None]
    capacity: Mapped[int | None]
    # Registration rules: double opt-in (a seat counts once the mailed link is confirmed),
    # accreditation (an organizer approves each organisation), the event's own questions.
    confirmation_required: Mapped[bool] = mapped_column(Boolean, default=True)
    accreditation_required: Mapped[bool] = mapped_column(Boolean, default=False)
    questions: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # Minutes before the start at which reminders go out; None: the process's policy.
    reminder_offsets: Mapped[list[int] | None] = mapped_column(JSON)
    # Placement relative to another event (set by templates, kept when that event moves).
    relative_to_id: Mapped[int | None] = mapped_column(
        ForeignKey("events.id", ondelete="SET NULL"), index=True
    )
    rule: Mapped[dict[str, Any] | None]
    template_key: Mapped[str | None] = mapped_column(String(80))
    pinned: Mapped[bool] = mapped_column(Boolean, default=False)
    sequence: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(default=utc_now, onupdate=utc_now)


class Milestone(Base):
    """A dated deadline or decision point of a process or of one event."""

    __tablename__ = "milestones"
    __table_args__ = (Index("ix_milestones_process_due", "process_id", "due_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uid: Mapped[str] = mapped_column(String(36), unique=True, default=new_uid)
    process_id: Mapped[int] = mapped_column(ForeignKey("processes.id", ondelete="CASCADE"))
    event_id: Mapped[int | None] = mapped_column(
        ForeignKey("events.id", ondelete="SET NULL"), index=True
    )
    kind: Mapped[str] = mapped_column(String(40))
    title: Mapped[str] = mapped_column(String(300))
    description: Mapped[str] = mapped_column(Text, default="")
    due_at: Mapped[datetime]
    time_zone: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(20), default="draft")
    # Minutes before the due time at which reminders go out; None: the process's policy.
    reminder_offsets: Mapped[list[int] | None] = mapped_column(JSON)
    relative_to_id: Mapped[int | None] = mapped_column(
        ForeignKey("events.id", ondelete="SET NULL"), index=True
    )
    rule: Mapped[dict[str, Any] | None]
    template_key: Mapped[str | None] = mapped_column(String(80))
    pinned: Mapped[bool] = mapped_column(Boolean, default=False)
    sequence: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(default=utc_now, onupdate=utc_now)


class Registration(Base):
    """One person's registration for one event."""

    __tablename__ = "registrations"
    __table_args__ = (
        Index("ix_registrations_event_status", "event_id", "status"),
        Index("ix_registrations_waitlist", "event_id", "waitlist_seq"),
        Index("ix_registrations_email", "email"),
        # One live registration per email and event; a cancelled one does not block.
        Index(
            "uq_registrations_event_email_active",
            "event_id",
            "email",
            unique=True,
            sqlite_where=text(ACTIVE_STATUS_SQL),
            postgresql_where=text(ACTIVE_STATUS_SQL),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"))
    process_id: Mapped[int] = mapped_column(ForeignKey("processes.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(320))
    organisation: Mapped[str] = mapped_column(String(300), default="")
    constituency: Mapped[str] = mapped_column(String(40))
    country: Mapped[str] = mapped_column(String(3))
    region: Mapped[str] = mapped_column(String(80), default="")
    language: Mapped[str] = mapped_column(String(8))
    time_zone: Mapped[str] = mapped_column(String(64))
    answers: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(20))
    waitlist_seq: Mapped[int | None]
    hold_expires_at: Mapped[datetime | None]
    confirmed_at: Mapped[datetime | None]
    promoted_at: Mapped[datetime | None]
    cancelled_at: Mapped[datetime | None]
    decided_at: Mapped[datetime | None]
    # Part of the manage-link signature: a new nonce revokes every link mailed before.
    token_nonce: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(default=utc_now, onupdate=utc_now)
    # When the person's data was anonymised (erased on request or past retention).
    erased_at: Mapped[datetime | None]


class Accreditation(Base):
    """An organisation approved for every event of a process until it expires."""

    __tablename__ = "accreditations"
    __table_args__ = (
        Index("uq_accreditations_process_org", "process_id", "organisation_key", unique=True),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    process_id: Mapped[int] = mapped_column(ForeignKey("processes.id", ondelete="CASCADE"))
    organisation_key: Mapped[str] = mapped_column(String(300))
    organisation: Mapped[str] = mapped_column(String(300))
    expires_at: Mapped[datetime]
    approved_by: Mapped[int | None] = mapped_column(
        ForeignKey("organizers.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


class SpeakerRequest(Base):
    """A registrant's request for the floor, and the organizer's decision and slot."""

    __tablename__ = "speaker_requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    registration_id: Mapped[int] = mapped_column(
        ForeignKey("registrations.id", ondelete="CASCADE"), unique=True
    )
    event_id: Mapped[int] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"), index=True)
    topic: Mapped[str] = mapped_column(String(300))
    summary: Mapped[str] = mapped_column(Text, default="")
    language: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(20), default="requested")
    position: Mapped[int | None]
    slot_start: Mapped[datetime | None]
    slot_end: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(default=utc_now, onupdate=utc_now)


class Notification(Base):
    """One message to one person: the outbox and the reminder ledger in one table.

    Written in the same transaction as the change that causes it; a sender claims due
    rows, delivers them and marks them sent, so a crash never loses a message.
    """

    __tablename__ = "notifications"
    __table_args__ = (
        Index("ix_notifications_due", "status", "due_at"),
        Index("ix_notifications_recipient", "recipient_email", "status", "due_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(40))
    # Set where a message must exist at most once (e.g. one reminder per person and offset).
    dedupe_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    registration_id: Mapped[int | None] = mapped_column(
        ForeignKey("registrations.id", ondelete="SET NULL"), index=True
    )
    # Lets a notification be added in the same flush as its new registration.
    registration: Mapped[Registration | None] = relationship(lazy="raise")
    event_id: Mapped[int | None] = mapped_column(
        ForeignKey("events.id", ondelete="SET NULL"), index=True
    )
    recipient_email: Mapped[str] = mapped_column(String(320))
    recipient_name: Mapped[str] = mapped_column(String(200), default="")
    language: Mapped[str] = mapped_column(String(8), default="en")
    time_zone: Mapped[str] = mapped_column(String(64), default="UTC")
    context: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    milestone_id: Mapped[int | None] = mapped_column(
        ForeignKey("milestones.id", ondelete="SET NULL"), index=True
    )
    subscription_id: Mapped[int | None] = mapped_column(
        ForeignKey("subscriptions.id", ondelete="SET NULL"), index=True
    )
    organizer_id: Mapped[int | None] = mapped_column(
        ForeignKey("organizers.id", ondelete="SET NULL"), index=True
    )
    # For reminders: minutes before the start, and what they were planned against (the
    # event's start and sequence). A row whose basis no longer matches is never sent.
    offset_minutes: Mapped[int | None]
    basis: Mapped[str] = mapped_column(String(100), default="")
    # A reminder folded into another person's digest mail points at the row that carried it.
    sent_with_id: Mapped[int | None] = mapped_column(
        ForeignKey("notifications.id", ondelete="SET NULL")
    )
    status: Mapped[str] = mapped_column(String(20), default="planned")
    reason: Mapped[str] = mapped_column(String(500), default="")
    due_at: Mapped[datetime] = mapped_column(default=utc_now)
    lease_until: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(Text, default="")
    message_id: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    sent_at: Mapped[datetime | None]


class ReminderPolicy(Base):
    """When reminders go out for one kind of event (or for milestones) of a process."""

    __tablename__ = "reminder_policies"
    __table_args__ = (Index("uq_reminder_policies_kind", "process_id", "kind", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    process_id: Mapped[int] = mapped_column(ForeignKey("processes.id", ondelete="CASCADE"))
    # An event kind, or "milestone".
    kind: Mapped[str] = mapped_column(String(40))
    offsets: Mapped[list[int]] = mapped_column(JSON)
    # Who is reminded: registrants, speakers, organizers (events); subscribers, organizers
    # (milestones).
    audiences: Mapped[list[str]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(default=utc_now, onupdate=utc_now)


class Subscription(Base):
    """Someone who asked to be reminded of a process's deadlines (double opt-in)."""

    __tablename__ = "subscriptions"
    __table_args__ = (Index("uq_subscriptions_process_email", "process_id", "email", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    process_id: Mapped[int] = mapped_column(ForeignKey("processes.id", ondelete="CASCADE"))
    email: Mapped[str] = mapped_column(String(320))
    name: Mapped[str] = mapped_column(String(200), default="")
    language: Mapped[str] = mapped_column(String(8), default="en")
    time_zone: Mapped[str] = mapped_column(String(64), default="UTC")
    # pending (until the mailed link is confirmed), active, unsubscribed.
    status: Mapped[str] = mapped_column(String(20), default="pending")
    token_nonce: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    confirmed_at: Mapped[datetime | None]
    unsubscribed_at: Mapped[datetime | None]


class Feed(Base):
    """An external pledge source, synced over HTTP on a schedule."""

    __tablename__ = "feeds"
    # What a pledge's one foreign key points at: its feed, and the feed's process.
    __table_args__ = (Index("uq_feeds_id_process", "id", "process_id", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    process_id: Mapped[int] = mapped_column(ForeignKey("processes.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200), unique=True)
    url: Mapped[str] = mapped_column(String(2000))
    format: Mapped[str] = mapped_column(String(10))  # json or csv
    # Exactly one of: every interval_seconds, or a cron expression (UTC).
    interval_seconds: Mapped[int | None]
    cron: Mapped[str | None] = mapped_column(String(100))
    field_map: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Sent as an HTTP header on each request; stored, never shown back.
    auth_header_name: Mapped[str] = mapped_column(String(100), default="")
    auth_header_value: Mapped[str] = mapped_column(String(2000), default="")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    etag: Mapped[str] = mapped_column(String(500), default="")
    last_modified: Mapped[str] = mapped_column(String(100), default="")
    # [url, etag, last_modified] of each page after the first, from the last full read.
    next_pages: Mapped[list[list[str]]] = mapped_column(JSON, default=list)
    next_run_at: Mapped[datetime | None]
    # A run in progress: the node running it and until when (lease, for several nodes).
    lease_until: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(default=utc_now, onupdate=utc_now)


class FeedRun(Base):
    """One sync of one feed: what it found and how it ended."""

    __tablename__ = "feed_runs"
    __table_args__ = (Index("ix_feed_runs_feed_started", "feed_id", "started_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    feed_id: Mapped[int] = mapped_column(ForeignKey("feeds.id", ondelete="CASCADE"))
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    # running, success, not_modified, failed
    outcome: Mapped[str] = mapped_column(String(20), default="running")
    http_status: Mapped[int | None]
    new: Mapped[int] = mapped_column(Integer, default=0)
    updated: Mapped[int] = mapped_column(Integer, default=0)
    unchanged: Mapped[int] = mapped_column(Integer, default=0)
    withdrawn: Mapped[int] = mapped_column(Integer, default=0)
    quarantined: Mapped[int] = mapped_column(Integer, default=0)
    duration_ms: Mapped[int | None]
    error: Mapped[str] = mapped_column(Text, default="")


class Pledge(Base):
    """A pledge in canonical form, as last seen in its feed."""

    __tablename__ = "pledges"
    __table_args__ = (
        Index("uq_pledges_feed_source", "feed_id", "source_id", unique=True),
        # Dashboards read the pledges of a process still in their feed (withdrawn_at IS
        # NULL). One index, not one per counted column: each index is paid for by every
        # pledge a sync writes (migration 0010 says how much).
        Index("ix_pledges_process_active", "process_id", "withdrawn_at"),
        # One key for both: the process is the feed's (never another), and each pledge a
        # sync writes costs one check instead of two (migration 0011).
        ForeignKeyConstraint(
            ["feed_id", "process_id"], ["feeds.id", "feeds.process_id"], ondelete="CASCADE"
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    feed_id: Mapped[int] = mapped_column(Integer)
    process_id: Mapped[int] = mapped_column(Integer)
    source_id: Mapped[str] = mapped_column(String(200))
    title: Mapped[str] = mapped_column(String(500))
    pledger_name: Mapped[str] = mapped_column(String(300))
    pledger_type: Mapped[str] = mapped_column(String(20))
    country: Mapped[str | None] = mapped_column(String(3))
    region: Mapped[str] = mapped_column(String(100), default="")
    pledge_type: Mapped[str] = mapped_column(String(20))
    matches_source_id: Mapped[str | None] = mapped_column(String(200))
    form: Mapped[str] = mapped_column(String(20))
    objectives: Mapped[list[int]] = mapped_column(JSON, default=list)
    # The same objectives as bits (objective n is 1 << n), for filters and counts.
    objective_mask: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(40), default="")
    submitted_at: Mapped[datetime | None]
    source_updated_at: Mapped[datetime | None]
    source_url: Mapped[str] = mapped_column(String(2000), default="")
    # Gone from the source: kept, marked withdrawn, never deleted.
    withdrawn_at: Mapped[datetime | None]
    content_hash: Mapped[str] = mapped_column(String(64))
    first_seen_at: Mapped[datetime] = mapped_column(default=utc_now)
    last_seen_at: Mapped[datetime] = mapped_column(default=utc_now)


class QuarantinedRecord(Base):
    """A feed record that failed validation, kept with the reason for organizers to see."""

    __tablename__ = "quarantined_records"
    __table_args__ = (Index("ix_quarantined_feed_run", "feed_id", "run_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    feed_id: Mapped[int] = mapped_column(ForeignKey("feeds.id", ondelete="CASCADE"))
    run_id: Mapped[int] = mapped_column(ForeignKey("feed_runs.id", ondelete="CASCADE"))
    source_id: Mapped[str] = mapped_column(String(200), default="")
    reason: Mapped[str] = mapped_column(String(1000))
    record: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


class AuditEntry(Base):
    """One change by an organizer or a system job (``audit``). Rows are only ever added:
    triggers refuse UPDATE and DELETE, and no foreign key ties them to what they name, so
    an entry outlives the process, event or organizer it is about."""

    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_log_process", "process_id", "id"),
        Index("ix_audit_log_entity", "entity_type", "entity_id", "id"),
        Index("ix_audit_log_at", "at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime]
    # organizer or system; the organizer's id, and a label: their name, or the job's.
    actor_kind: Mapped[str] = mapped_column(String(20))
    actor_id: Mapped[int | None]
    actor_label: Mapped[str] = mapped_column(String(200))
    process_id: Mapped[int | None]
    action: Mapped[str] = mapped_column(String(60))
    entity_type: Mapped[str] = mapped_column(String(40))
    entity_id: Mapped[int]
    # Only the fields that changed; personal data and secrets as "[redacted]".
    before: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    after: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    request_id: Mapped[str | None] = mapped_column(String(64))


class Webhook(Base):
    """A URL an organizer subscribed to some of a process's events (README: Webhooks)."""

    __tablename__ = "webhooks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    process_id: Mapped[int] = mapped_column(
        ForeignKey("processes.id", ondelete="CASCADE"), index=True
    )
    url: Mapped[str] = mapped_column(String(2000))
    event_types: Mapped[list[str]] = mapped_column(JSON)
    description: Mapped[str] = mapped_column(String(500), default="")
    # "whsec_" and the base64 of 32 random bytes. Kept as is: every delivery is signed with it.
    secret: Mapped[str] = mapped_column(String(100))
    # The secret before the last rotation signs too (a second signature) until this time.
    previous_secret: Mapped[str] = mapped_column(String(100), default="")
    previous_secret_until: Mapped[datetime | None]
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # Since when deliveries fail without one success; past webhooks_disable_after_hours the
    # webhook is disabled, with the reason.
    failing_since: Mapped[datetime | None]
    disabled_at: Mapped[datetime | None]
    disabled_reason: Mapped[str] = mapped_column(String(500), default="")
    created_by: Mapped[int | None] = mapped_column(ForeignKey("organizers.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(default=utc_now, onupdate=utc_now)


class WebhookDelivery(Base):
    """One event for one webhook: an outbox row, claimed, retried and leased like a mail.

    ``payload`` is the exact body sent on every attempt; ``message_id`` (the webhook-id
    header) is the same for every webhook that gets the event, and on every retry.
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_due", "status", "due_at"),
        Index("ix_webhook_deliveries_webhook", "webhook_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    webhook_id: Mapped[int] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    message_id: Mapped[str] = mapped_column(String(40))
    event_type: Mapped[str] = mapped_column(String(40))
    payload: Mapped[str] = mapped_column(Text)
    # planned, sending (under lease_until), sent, failed, cancelled
    status: Mapped[str] = mapped_column(String(20), default="planned")
    due_at: Mapped[datetime] = mapped_column(default=utc_now)
    lease_until: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    sent_at: Mapped[datetime | None]


class WebhookAttempt(Base):
    """One HTTP request of a delivery: when, how long, the answer's status or the error."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    delivery_id: Mapped[int] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True
    )
    attempted_at: Mapped[datetime]
    duration_ms: Mapped[int] = mapped_column(Integer)
    http_status: Mapped[int | None]
    error: Mapped[str] = mapped_column(Text, default="")
    # The first characters of the receiver's answer (it is never read further).
    response_excerpt: Mapped[str] = mapped_column(Text, default="")
