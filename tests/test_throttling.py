"""Abuse limits per client address and scope: the call past the rate gets 429 `throttled` with
Retry-After, and the other scopes are not affected."""

import pytest
from django.core.cache import cache

from tests.conftest import load_chrome_set
from tests.recorder_client import post_chunk, start, status_of

pytestmark = pytest.mark.django_db


@pytest.fixture
def limits(settings):
    settings.RECORDER_THROTTLE_RATES = {"start": "3/minute", "chunk": "2/minute", "finalize": None, "read": "4/hour"}
    cache.clear()
    yield settings.RECORDER_THROTTLE_RATES
    cache.clear()


def test_starting_past_the_rate_is_throttled_with_retry_after(api, limits):
    for _ in range(3):
        start(api)
    response = api.post("/api/start-recording/", {}, format="json")
    assert response.status_code == 429
    assert response.json()["code"] == "throttled"
    assert 0 < int(response["Retry-After"]) <= 60


def test_each_scope_counts_on_its_own(api, limits):
    chunks = load_chrome_set("vp8_opus").chunks
    started = start(api)
    assert [post_chunk(api, started, chunks[index], index=index).status_code for index in range(3)] == [201, 201, 429]
    for _ in range(4):
        status_of(api, started.session_id)  # reads have their own budget
    assert api.get(f"/api/get-recorded-data/{started.session_id}/").status_code == 429
    response = api.get(f"/api/recordings/{started.session_id}/video/")
    assert (response.status_code, response.json()["code"]) == (429, "throttled")
    start(api)  # and starting still works: 2 of 3 used


def test_clients_behind_a_proxy_are_told_apart_by_x_forwarded_for(api, limits, settings):
    settings.RECORDER_NUM_PROXIES = 1
    for client_address in ("203.0.113.1", "203.0.113.2"):
        headers = {"X-Forwarded-For": client_address}
        statuses = [api.post("/api/start-recording/", {}, format="json", headers=headers).status_code for _ in range(4)]
        assert statuses == [201, 201, 201, 429]


def test_a_scope_set_to_off_is_never_throttled(api, limits, settings):
    settings.RECORDER_THROTTLE_RATES = {**limits, "start": None}
    assert {api.post("/api/start-recording/", {}, format="json").status_code for _ in range(10)} == {201}


def test_an_ipv6_client_has_one_budget_for_its_whole_slash_64():
    from recordings.throttling import throttle_key

    assert throttle_key("2001:db8:1:2::1") == throttle_key("2001:db8:1:2:ffff:ffff:ffff:ffff") == "2001:db8:1:2::/64"
    assert throttle_key("2001:db8:1:3::1") != throttle_key("2001:db8:1:2::1")
    assert throttle_key("::ffff:203.0.113.7") == throttle_key("203.0.113.7") == "203.0.113.7"
    assert throttle_key("not an address") == "unparsable"


@pytest.mark.parametrize(
    ("forwarded", "num_proxies", "expected"),
    [
        ("198.51.100.1", 0, "127.0.0.9"),  # no proxy in front: the header is the client's own claim
        ("10.0.0.1, 198.51.100.1", 1, "198.51.100.1"),  # one proxy: the address it appended
        ("10.0.0.1, 198.51.100.1, 192.0.2.5", 2, "198.51.100.1"),  # two: the first proxy's entry
        ("198.51.100.1", 2, "127.0.0.9"),  # fewer entries than proxies: it did not come through them
        (None, 1, "127.0.0.9"),  # no header at all: the socket's peer, not a shared empty address
    ],
)
def test_the_client_address_is_the_socket_unless_trusted_proxies_say_otherwise(forwarded, num_proxies, expected):
    from recordings.throttling import client_address

    meta = {"REMOTE_ADDR": "127.0.0.9", **({"HTTP_X_FORWARDED_FOR": forwarded} if forwarded else {})}
    assert client_address(meta, num_proxies) == expected
