"""A process's reminder policies: per kind of event (and one for its milestones), when
reminders go out and to whom. Kinds without a policy use the defaults (7 days, 1 day and
1 hour before, to everyone); an event or milestone may still set its own offsets.

Replacing the policies re-plans every upcoming reminder of the process in the same
transaction. Services flush and never commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from scheduler import fields as f
from scheduler import reminders
from scheduler.errors import Invalid, NotFound
from scheduler.models import Process, ReminderPolicy

PolicyKind = Literal[
    "review_forum",
    "regional_review",
    "stakeholder_hearing",
    "dialogue_meeting",
    "consultation",
    "round_table",
    "policy_debate",
    "plenary",
    "other",
    "milestone",
]
Audience = Literal["registrants", "speakers", "organizers", "subscribers"]


class PolicyIn(msgspec.Struct, forbid_unknown_fields=True):
    kind: PolicyKind
    offsets: f.ReminderOffsets
    # Left out: everyone the kind has (registrants, speakers, organizers for events;
    # subscribers, organizers for milestones).
    audiences: Annotated[list[Audience], Meta(max_length=4)] | None = None


class PoliciesIn(msgspec.Struct, forbid_unknown_fields=True):
    policies: Annotated[list[PolicyIn], Meta(max_length=len(reminders.POLICY_KINDS))]


@dataclass(frozen=True, slots=True)
class Effective:
    kind: str
    policy: reminders.Policy
    source: Literal["process", "default"]


def checked(data: PoliciesIn) -> dict[str, reminders.Policy]:
    """Policies by kind; refusals name the field (``policies[1].audiences[0]``)."""
    out: dict[str, reminders.Policy] = {}
    for i, item in enumerate(data.policies):
        where = f"policies[{i}]"
        if item.kind in out:
            raise Invalid(f"{where}.kind", f"{item.kind} is listed twice")
        offsets = f.check_offsets(f"{where}.offsets", item.offsets) or []
        allowed = reminders.default_policy(item.kind).audiences
        audiences = list(allowed) if item.audiences is None else item.audiences
        for j, audience in enumerate(audiences):
            if audience not in allowed:
                raise Invalid(
                    f"{where}.audiences[{j}]",
                    f"{item.kind} reminders go to {', '.join(allowed)}, not {audience}",
                )
            if audience in audiences[:j]:
                raise Invalid(f"{where}.audiences[{j}]", f"{audience} is listed twice")
        out[item.kind] = reminders.Policy(tuple(offsets), tuple(audiences))
    return out


async def effective(session: AsyncSession, process_id: int) -> list[Effective]:
    """The policy of every kind, stored or default."""
    if await session.get(Process, process_id) is None:
        raise NotFound(f"no process {process_id}")
    stored = await reminders.stored_policies(session, [process_id])
    result = []
    for kind in reminders.POLICY_KINDS:
        policy = stored.get((process_id, kind))
        if policy is None:
            result.append(Effective(kind, reminders.default_policy(kind), "default"))
        else:
            result.append(Effective(kind, policy, "process"))
    return result


async def replace(
    session: AsyncSession, process_id: int, data: PoliciesIn, now: datetime
) -> list[Effective]:
    """Store these policies (kinds left out go back to the defaults) and re-plan.

    Rows are changed in place, not replaced, so the audit trail shows what changed.
    """
    policies = checked(data)
    if await session.get(Process, process_id) is None:
        raise NotFound(f"no process {process_id}")
    stored = {
        row.kind: row
        for row in await session.scalars(
            select(ReminderPolicy).where(ReminderPolicy.process_id == process_id)
        )
    }
    for kind, gone in stored.items():
        if kind not in policies:
            await session.delete(gone)
    for kind, policy in policies.items():
        row = stored.get(kind)
        if row is None:
            session.add(
                ReminderPolicy(
                    process_id=process_id,
                    kind=kind,
                    offsets=list(policy.offsets),
                    audiences=list(policy.audiences),
                    updated_at=now,
                )
            )
        elif (row.offsets, row.audiences) != (list(policy.offsets), list(policy.audiences)):
            row.offsets = list(policy.offsets)
            row.audiences = list(policy.audiences)
            row.updated_at = now
    await session.flush()
    await reminders.sync_process(session, process_id, now)
    return await effective(session, process_id)
