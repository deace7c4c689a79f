"""The pages behind mailed links: view, confirm (by button, never by GET), cancel."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from scheduler.database import open_database
from scheduler.manage_links import load_secret, sign
from scheduler.models import Registration
from tests.conftest import Api


async def hearing(api: Api, capacity: int = 1) -> int:
    r = await api.client.post(
        "/api/processes",
        json={"slug": "pages", "name": "Pages", "time_zone": "America/New_York"},
        headers=api.auth,
    )
    start = datetime.now(UTC) + timedelta(days=20)
    r = await api.client.post(
        "/api/events",
        json={
            "process_id": r.json()["id"],
            "kind": "stakeholder_hearing",
            "title": "Hearing",
            "time_zone": "America/New_York",
            "start": start.isoformat(),
            "end": (start + timedelta(hours=8)).isoformat(),
            "status": "published",
            "capacity": capacity,
        },
        headers=api.auth,
    )
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


async def register(api: Api, event_id: int, n: int) -> tuple[int, str]:
    r = await api.client.post(
        f"/api/events/{event_id}/registrations",
        json={
            "name": f"Person {n}",
            "email": f"p{n}@example.org",
            "constituency": "academia",
            "country": "SEN",
            "language": "fr",
            "time_zone": "Africa/Dakar",
        },
    )
    assert r.status_code == 201, r.text
    reg_id = int(r.json()["id"])
    db = open_database(api.settings)
    try:
        async with db.reader() as session:
            nonce = await session.scalar(
                select(Registration.token_nonce).where(Registration.id == reg_id)
            )
    finally:
        await db.dispose()
    assert nonce is not None
    secret = load_secret(api.settings.secret_key, api.settings.data_dir)
    return reg_id, sign(reg_id, nonce, secret)


async def test_confirm_by_button_and_cancel_promotes(api: Api) -> None:
    event_id = await hearing(api, capacity=1)
    _, token = await register(api, event_id, 1)
    _, second = await register(api, event_id, 2)

    page = await api.client.get(f"/registrations/{token}")
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    assert "Place réservée" in page.text and 'lang="fr"' in page.text
    assert "(Africa/Dakar)" not in page.text and "Africa/Dakar" in page.text

    # Following the mailed confirm link shows a button; it does not confirm by itself.
    shown = await api.client.get(f"/registrations/{token}/confirm")
    assert shown.status_code == 200 and '<form method="post"' in shown.text
    view = (await api.client.get(f"/api/registrations/{token}")).json()
    assert view["status"] == "held"

    done = await api.client.post(f"/registrations/{token}/confirm", follow_redirects=False)
    assert done.status_code == 303
    assert (await api.client.get(f"/api/registrations/{token}")).json()["status"] == "confirmed"
    waiting = (await api.client.get(f"/registrations/{second}")).text
    assert "Sur la liste d\u2019attente" in waiting  # in the registrant's language

    done = await api.client.post(f"/registrations/{token}/cancel", follow_redirects=False)
    assert done.status_code == 303
    after = await api.client.get(done.headers["location"])
    assert "Annulée" in after.text
    promoted = (await api.client.get(f"/api/registrations/{second}")).json()
    assert promoted["status"] == "held"


async def test_forged_links_get_a_plain_404_page(api: Api) -> None:
    event_id = await hearing(api)
    reg_id, token = await register(api, event_id, 1)
    for bad in (token[:-1] + ("A" if token[-1] != "A" else "B"), "nonsense", f"{reg_id + 9}.x"):
        page = await api.client.get(f"/registrations/{bad}")
        assert page.status_code == 404
        assert "Not found" in page.text
        assert "Person" not in page.text
