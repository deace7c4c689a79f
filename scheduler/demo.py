"""The demo cycle: the Global Compact for Migration review, with the IMRF format for 2026."""

from __future__ import annotations

from datetime import date

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from scheduler.cycle_templates import Template
from scheduler.models import Process, utc_now
from scheduler.processes import Instantiate, ProcessCreate, create_process, instantiate

DEMO_SLUG = "gcm"
DEMO_FORUM_DAY = date(2026, 5, 5)


async def load_demo(session: AsyncSession, templates: dict[str, Template]) -> Process | None:
    """Create the demo process once; None if it is already there."""
    if await session.scalar(select(Process).where(Process.slug == DEMO_SLUG)) is not None:
        return None
    process = await create_process(
        session,
        ProcessCreate(
            slug=DEMO_SLUG,
            name="Global Compact for Migration review",
            time_zone="America/New_York",
            description=(
                "The review cycle of the Global Compact for Safe, Orderly and Regular "
                "Migration: the International Migration Review Forum every four years, "
                "regional reviews in the years between, and the consultations, dialogues "
                "and deadlines around them."
            ),
            languages=["en", "fr", "es", "ar"],
        ),
        owner_id=None,
    )
    await instantiate(
        session,
        process,
        templates,
        Instantiate(template="imrf", anchor_date=DEMO_FORUM_DAY, status="published"),
        utc_now(),
    )
    return process
