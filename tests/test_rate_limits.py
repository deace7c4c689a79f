"""Rate limits on the public forms that mail someone: the pure windows, then the API and the
registration page on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from scheduler.rate_limits import RateLimits, SlidingWindow, client_key
from scheduler.settings import Settings
from tests.conftest import Api, base_settings
from tests.test_api_registrations import make_event, make_process, person

# --- The windows (pure) -------------------------------------------------------------------


def test_a_window_admits_its_limit_then_says_when_to_come_back() -> None:
    window = SlidingWindow(3, 60)
    for t in (0.0, 10.0, 20.0):
        assert window.wait("a", t) == 0
        window.hit("a", t)
    assert window.wait("a", 30.0) == pytest.approx(30.0)  # the hit at 0 ages out at 60
    assert window.wait("b", 30.0) == 0  # keys are counted apart
    assert window.wait("a", 60.0) == 0  # sliding: one slot is free again
    window.hit("a", 60.0)
    assert window.wait("a", 61.0) == pytest.approx(9.0)  # now the hit at 10 is the oldest


def test_zero_turns_a_limit_off() -> None:
    window = SlidingWindow(0, 60)
    for t in range(1000):
        assert window.wait("a", float(t)) == 0
        window.hit("a", float(t))
    assert len(window) == 0


def test_memory_stays_bounded() -> None:
    window = SlidingWindow(2, 60, max_keys=100)
    for n in range(1000):
        window.hit(f"k{n}", float(n) / 100)  # all within one window: none idle
        assert len(window) <= 100
    window.hit("k999", 10.0)
    assert window.wait("k999", 10.0) > 0  # the most recent keys are kept, with their hits
    full = SlidingWindow(2, 60, max_keys=100)
    for n in range(100):
        full.hit(f"k{n}", 0.0)
    full.hit("late", 1000.0)  # every earlier key is idle by now
    assert len(full) == 1


def test_ipv6_clients_count_per_64_and_mapped_ipv4_as_ipv4() -> None:
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::2")
    assert client_key("2001:db8:1:2::1") != client_key("2001:db8:1:3::1")
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_key("192.0.2.7") == "192.0.2.7"
    assert client_key(None) == "unknown"


def test_both_limits_must_allow_and_refusals_are_not_counted() -> None:
    limits = RateLimits(per_ip=5, per_email=2, window_seconds=600)
    assert limits.admit("192.0.2.1", "Amina@example.org", 0) is None
    assert limits.admit("192.0.2.2", "amina@EXAMPLE.org", 1) is None  # same mailbox
    refusal = limits.admit("192.0.2.3", "amina@example.org", 2)
    assert refusal is not None
    assert (refusal.limit, refusal.allowed, refusal.retry_after) == (
        "rate_limits_per_email",
        2,
        598,
    )
    assert "this email address" in refusal.detail
    # The refused request did not use up the third address's allowance.
    for n in range(5):
        assert limits.admit("192.0.2.3", f"p{n}@example.org", 3) is None
    refusal = limits.admit("192.0.2.3", "q@example.org", 4)
    assert refusal is not None and refusal.limit == "rate_limits_per_ip"
    assert refusal.retry_after == 599
    assert limits.admit("192.0.2.3", "q@example.org", 603.5) is None  # the first aged out


# --- Over HTTP ----------------------------------------------------------------------------


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return base_settings(database_url, tmp_path).replace(
        rate_limits_per_ip=4, rate_limits_per_email=2, rate_limits_window_seconds=600
    )


def assert_refused(r: object, limit: str) -> None:
    status = getattr(r, "status_code", None)
    assert status == 429, getattr(r, "text", "")
    retry_after = int(r.headers["retry-after"])  # type: ignore[attr-defined]
    assert 1 <= retry_after <= 600
    body = r.json()  # type: ignore[attr-defined]
    assert body["status_code"] == 429
    assert body["extra"][0]["key"] == limit
    assert limit in body["detail"]


async def test_registration_resend_and_subscribe_share_the_limits(api: Api) -> None:
    pid = await make_process(api)
    eid = (await make_event(api, pid))["id"]
    url = f"/api/events/{eid}/registrations"
    assert (await api.client.post(url, json=person("Amina Diallo"))).status_code == 201
    r = await api.client.post(f"{url}/resend", json={"email": "amina@example.org"})
    assert r.status_code == 202
    # A third request for the same mailbox, through another form: refused by the email limit.
    r = await api.client.post(
        f"/api/processes/{pid}/subscriptions", json={"email": "AMINA@example.org"}
    )
    assert_refused(r, "rate_limits_per_email")

    # Other addresses from the same client: the per-address limit (4) ends it.
    assert (await api.client.post(url, json=person("Bola Ade"))).status_code == 201
    r = await api.client.post(f"/api/processes/{pid}/subscriptions", json={"email": "c@x.org"})
    assert r.status_code == 202
    assert_refused(await api.client.post(url, json=person("Dara Khan")), "rate_limits_per_ip")
    assert_refused(
        await api.client.post(f"{url}/resend", json={"email": "e@x.org"}), "rate_limits_per_ip"
    )
    # Reading is never limited.
    assert (await api.client.get(f"/api/events/{eid}")).status_code == 200
    r = await api.client.get(f"/api/events/{eid}/registrations", headers=api.auth)
    assert r.json()["total"] == 2


async def test_the_registration_page_says_when_to_come_back(api: Api) -> None:
    pid = await make_process(api)
    eid = (await make_event(api, pid))["id"]
    form = {
        "name": "Amina",
        "email": "amina@example.org",
        "constituency": "academia",
        "country": "KEN",
        "language": "fr",
        "time_zone": "Africa/Nairobi",
    }
    first = await api.client.post(f"/events/{eid}/register", data=form, follow_redirects=False)
    assert first.status_code == 303
    again = await api.client.post(f"/events/{eid}/register", data=form)
    assert again.status_code == 400 and "already registered" in again.text
    refused = await api.client.post(
        f"/events/{eid}/register", data=form, headers={"Accept-Language": "fr"}
    )
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert "Trop de tentatives" in refused.text
    assert 'value="amina@example.org"' in refused.text  # what was typed is kept
