"""What the public forms say about an address that someone else types in: the same answer
whatever the state of that address's registration or subscription, and anything more goes
to the mailbox itself. SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from scheduler import manage_links
from scheduler.models import Notification, Subscription
from scheduler.settings import Settings
from tests.conftest import Api, base_settings
from tests.test_api_registrations import database, make_event, make_process, person

SECRET = "disclosure-tests-secret"


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return base_settings(database_url, tmp_path).replace(secret_key=SECRET)


async def manage_links_to(api: Api) -> list[str]:
    async with database(api) as session:
        rows = await session.scalars(
            select(Notification.recipient_email)
            .where(Notification.kind == "manage_link")
            .order_by(Notification.id)
        )
        return list(rows)


async def test_a_duplicate_registration_gets_one_answer_whatever_its_state(api: Api) -> None:
    pid = await make_process(api)
    open_event = await make_event(api, pid, capacity=1)  # double opt-in: held, then waiting
    direct = await make_event(api, pid, title="Dialogue", confirmation_required=False)
    vetted = await make_event(api, pid, title="Consultation", accreditation_required=True)
    setups = [
        (open_event["id"], person("Amina Diallo"), "held"),
        (open_event["id"], person("Bola Ade"), "waiting"),
        (direct["id"], person("Chen Li"), "confirmed"),
        (vetted["id"], person("Dara Khan", organisation="New NGO"), "pending_approval"),
    ]
    answers = []
    for event_id, body, status in setups:
        url = f"/api/events/{event_id}/registrations"
        first = await api.client.post(url, json=body)
        assert first.json()["status"] == status, first.text
        again = await api.client.post(url, json=body | {"name": "Someone Else"})
        assert again.status_code == 409
        answers.append(again.json()["detail"].replace(f"/events/{event_id}/", "/events/N/"))
    assert len(set(answers)) == 1  # nothing about the registration's state
    # Each mailbox got its manage link; a stranger learns nothing more than "already there".
    assert await manage_links_to(api) == [
        "amina@example.org",
        "bola@example.org",
        "chen@example.org",
        "dara@example.org",
    ]


async def test_asking_for_the_manage_link_again_never_tells(api: Api) -> None:
    pid = await make_process(api)
    eid = (await make_event(api, pid))["id"]
    await api.client.post(f"/api/events/{eid}/registrations", json=person("Amina Diallo"))
    answers = set()
    for event_id, email in (
        (eid, "amina@example.org"),  # registered
        (eid, "nobody@example.org"),  # not registered
        (eid + 100, "amina@example.org"),  # no such event
    ):
        r = await api.client.post(
            f"/api/events/{event_id}/registrations/resend", json={"email": email}
        )
        answers.add((r.status_code, r.text))
    assert len(answers) == 1 and next(iter(answers))[0] == 202


async def test_subscribing_never_tells_whether_the_address_is_subscribed(api: Api) -> None:
    pid = await make_process(api)
    url = f"/api/processes/{pid}/subscriptions"
    answers = set()

    async def ask(email: str) -> None:
        r = await api.client.post(url, json={"email": email})
        answers.add((r.status_code, r.text))

    await ask("new@example.org")  # unknown
    await ask("new@example.org")  # pending (and asked again at once: no second mail)
    async with database(api) as session:
        sub = await session.scalar(select(Subscription))
        assert sub is not None
        token = manage_links.sign(sub.id, sub.token_nonce, SECRET.encode(), "sub:")
    assert (await api.client.post(f"/api/subscriptions/{token}/confirm")).status_code == 200
    await ask("new@example.org")  # active
    assert (await api.client.post(f"/api/subscriptions/{token}/unsubscribe")).status_code == 200
    await ask("new@example.org")  # unsubscribed
    assert len(answers) == 1 and next(iter(answers))[0] == 202
