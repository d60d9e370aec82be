"""The shared base: error mapping, in-call retries with injected sleep, limiter feedback."""

from __future__ import annotations

import httpx
import pytest
import redis

from adapters.base import (
    BatchState,
    EspAdapter,
    EspClient,
    RetryPolicy,
    Transport,
    header_number,
    retry_after_header,
    status_error,
)
from adapters.change import APPLIED, FAILED, SKIPPED, Change, OwnedState
from adapters.errors import AdapterError, AuthError, PermanentError, RateLimited, TransientError
from adapters.ratelimit import Limits, RateLimiter, Window
from tests.helpers import SimClock


def client(
    responses: list[httpx.Response | Exception],
    clock: SimClock,
    limiter: RateLimiter | None = None,
    policy: RetryPolicy | None = None,
) -> tuple[EspClient, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        item = responses.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    transport = Transport(
        base_url="https://esp.test",
        headers={"Authorization": "Bearer secret-token"},
        limiter_key="esp:k",
        error_mapper=lambda r: status_error(r, None, r.text),
        limiter=limiter,
        buckets={"default": Limits(windows=(Window(100, 10.0),))},
        clock=clock,
        sleep=clock.sleep,
        policy=policy or RetryPolicy(),
        http_transport=httpx.MockTransport(handler),
    )
    return EspClient(transport), seen


def test_5xx_and_timeouts_are_retried_then_succeed() -> None:
    clock = SimClock()
    responses: list[httpx.Response | Exception] = [
        httpx.Response(502),
        httpx.ReadTimeout("slow"),
        httpx.ConnectError("refused"),
        httpx.Response(200, json={"ok": True}),
    ]
    esp, seen = client(responses, clock)
    assert esp.request("GET", "/x").json() == {"ok": True}
    assert len(seen) == 4
    assert len(clock.slept) == 3  # backed off between attempts, on the injected clock


def test_permanent_errors_are_not_retried() -> None:
    clock = SimClock()
    esp, seen = client([httpx.Response(400, text="bad")], clock)
    with pytest.raises(PermanentError):
        esp.request("POST", "/x", json={})
    assert len(seen) == 1
    esp, seen = client([httpx.Response(401, text="nope")], clock)
    with pytest.raises(AuthError) as info:
        esp.request("POST", "/x", json={})
    assert "secret-token" not in str(info.value)
    assert len(seen) == 1


def test_retry_after_is_honoured() -> None:
    clock = SimClock()
    esp, _ = client([httpx.Response(429, headers={"Retry-After": "7"}), httpx.Response(204)], clock)
    esp.request("GET", "/x")
    assert clock.slept == [7.0]


def test_long_retry_after_goes_back_to_the_worker() -> None:
    clock = SimClock()
    esp, seen = client([httpx.Response(429, headers={"Retry-After": "3600"})], clock)
    with pytest.raises(RateLimited) as info:
        esp.request("GET", "/x")
    assert info.value.retry_after == 3600
    assert len(seen) == 1 and clock.slept == []


def test_attempts_are_bounded() -> None:
    clock = SimClock()
    esp, seen = client([httpx.Response(500)] * 10, clock, policy=RetryPolicy(attempts=3))
    with pytest.raises(TransientError):
        esp.request("GET", "/x")
    assert len(seen) == 3


def test_a_429_slows_the_shared_limiter_down(redis_client: redis.Redis) -> None:
    clock = SimClock()
    limiter = RateLimiter(redis_client, clock=clock, sleep=clock.sleep)
    esp, _ = client([httpx.Response(429, headers={"Retry-After": "2"}), httpx.Response(200)], clock, limiter)
    esp.request("GET", "/x")
    factor = limiter.factor("esp:k")
    assert 0.5 <= factor < 1.0  # halved by the 429, ramped a little by the success


def test_client_repr_and_errors_hide_credentials() -> None:
    clock = SimClock()
    esp, _ = client([httpx.Response(403, text="forbidden")], clock)
    assert "secret-token" not in repr(esp)
    with pytest.raises(AuthError) as info:
        esp.request("GET", "/x")
    assert "secret-token" not in repr(info.value.describe())


def test_a_429_storm_never_pushes_the_sender_above_the_configured_rate(redis_client: redis.Redis) -> None:
    clock = SimClock()
    limiter = RateLimiter(redis_client, clock=clock, sleep=clock.sleep)
    sent: list[float] = []
    n = {"i": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(clock.t)
        n["i"] += 1
        if n["i"] % 3 == 0:  # every third request is throttled
            return httpx.Response(429, headers={"Retry-After": "1"})
        return httpx.Response(200, json={})

    transport = Transport(
        base_url="https://esp.test",
        headers={},
        limiter_key="esp:storm",
        error_mapper=lambda r: status_error(r, None, r.text),
        limiter=limiter,
        buckets={"default": Limits(windows=(Window(10, 10.0),))},
        clock=clock,
        sleep=clock.sleep,
        http_transport=httpx.MockTransport(handler),
    )
    esp = EspClient(transport)
    for _ in range(60):
        esp.request("GET", "/x")
    for t in sent:
        assert len([s for s in sent if t - 10.0 < s <= t]) <= 10
    assert limiter.factor("esp:storm") < 1.0  # it slowed down


def test_transport_repr_hides_the_credential() -> None:
    from adapters.mailchimp import MailchimpAdapter, MailchimpConfig

    ad = MailchimpAdapter(MailchimpConfig(api_key="topsecret-us1", list_id="l"))
    assert "topsecret" not in repr(ad.client.t) + repr(ad.config) + repr(ad.client)


def test_a_blocked_key_defers_the_request_instead_of_sleeping_for_hours(redis_client: redis.Redis) -> None:
    clock = SimClock()
    limiter = RateLimiter(redis_client, clock=clock, sleep=clock.sleep)
    limiter.block_until("esp:k", clock() + 6 * 3600)  # e.g. a daily quota spent
    esp, seen = client([httpx.Response(200)], clock, limiter)
    with pytest.raises(RateLimited) as caught:
        esp.request("GET", "/x")
    assert caught.value.scope == "WAIT"
    assert caught.value.retry_after == pytest.approx(6 * 3600)
    assert caught.value.retryable
    assert seen == [] and clock.slept == []  # nothing sent, nobody held for six hours
    # a wait inside a window (here 10 s) is still waited for in-process
    limiter2 = RateLimiter(redis_client, clock=clock, sleep=clock.sleep)
    tight, sent = client([httpx.Response(200), httpx.Response(200)], clock, limiter2)
    tight.t.buckets = {"default": Limits(windows=(Window(1, 10.0),))}
    tight.t.limiter_key = "esp:tight"
    tight.request("GET", "/a")
    tight.request("GET", "/b")
    assert len(sent) == 2 and clock.slept == [pytest.approx(10.0)]


def test_an_anti_abuse_throttle_of_one_contact_leaves_the_key_open(redis_client: redis.Redis) -> None:
    clock = SimClock()
    limiter = RateLimiter(redis_client, clock=clock, sleep=clock.sleep)
    esp, _ = client([httpx.Response(400, text="signed up to a lot of lists")], clock, limiter)

    def abuse(response: httpx.Response) -> RateLimited:
        return RateLimited("400 anti-abuse", retry_after=6 * 3600, scope="ABUSE", status=400)

    esp.t.error_mapper = abuse
    with pytest.raises(RateLimited):
        esp.request("POST", "/members")
    assert limiter.blocked_for("esp:k") == 0.0
    assert limiter.factor("esp:k") == 1.0
    assert clock.slept == []


@pytest.mark.parametrize(
    ("error", "stops"),
    [
        (AuthError("401", status=401), True),
        (RateLimited("429 daily", retry_after=3600, scope="DAILY"), True),
        (RateLimited("429", retry_after=1.0), False),
        (RateLimited("400 anti-abuse", retry_after=6 * 3600, scope="ABUSE", status=400), False),
        (RateLimited("slot far away", retry_after=900, scope="WAIT", status=None), False),
        (TransientError("503", status=503), False),
        (PermanentError("400", status=400), False),
    ],
)
def test_which_errors_stop_the_whole_destination(error: AdapterError, stops: bool) -> None:
    assert error.stops_destination is stops


def contact(pid: str, **kw: object) -> Change:
    return Change(
        account="acme", destination="esp", profile_id=pid, version=1, email=f"{pid}@example.com", **kw
    )  # type: ignore[arg-type]


def test_a_batch_fails_one_contact_but_raises_what_stops_the_destination() -> None:
    batch = BatchState.start([contact("p1"), contact("p2")], {}, lambda c: pytest.fail("no erasure"))
    p1, p2 = batch.live
    batch.fail(p1, TransientError("503", status=503))
    assert set(batch.errors) == {"p1"} and [c.profile_id for c in batch.pending()] == ["p2"]
    with pytest.raises(RateLimited):
        batch.fail_all([p2], RateLimited("429 daily", retry_after=60, scope="DAILY"))

    def refused() -> None:
        raise AuthError("403", status=403)

    with pytest.raises(AuthError):
        batch.attempt(p2, refused)
    assert set(batch.errors) == {"p1"}  # an error that stops the destination fails no single contact


class OneCallPerContact(EspAdapter):
    """An ESP module of the smallest kind: one POST per contact, one DELETE per erasure."""

    name = "esp"
    batch_size = 10
    erased_note = "deleted"

    def __init__(self, esp: EspClient) -> None:
        self.client = esp
        self.steps: list[str] = []

    def check(self, batch: BatchState) -> None:
        self.steps.append("check")

    def write(self, batch: BatchState) -> None:
        self.steps.append("write")
        for change in batch.pending():
            if batch.attempt(change, lambda c=change: self.client.request("POST", f"/contacts/{c.email}")):
                batch.ids[change.profile_id] = f"id-{change.profile_id}"
                batch.written.add(change.profile_id)

    def memberships(self, batch: BatchState) -> None:
        self.steps.append(f"memberships {sorted(c.profile_id for c in batch.pending())}")

    def delete_contact(self, email: str) -> None:
        self.client.request("DELETE", f"/contacts/{email}")


def test_the_apply_skeleton_runs_the_hooks_and_builds_one_result_per_change() -> None:
    clock = SimClock()
    esp, seen = client(
        [
            httpx.Response(404, text="gone already"),  # erasure of p0: nothing left to delete
            httpx.Response(200, json={}),  # p1 written
            httpx.Response(400, text="bad field"),  # p2 refused
        ],
        clock,
    )
    adapter = OneCallPerContact(esp)
    changes = [
        contact("p0", erase=True),
        contact("p1", tags=frozenset({"vip"})),
        contact("p2", tags=frozenset({"vip"})),
        Change(account="acme", destination="esp", profile_id="p3", version=1, email=None),
    ]
    results = adapter.apply(changes, {"p2": OwnedState(tags=frozenset({"old"}))})
    assert [r.profile_id for r in results] == ["p0", "p1", "p2", "p3"]
    assert [r.status for r in results] == [APPLIED, APPLIED, FAILED, SKIPPED]
    assert results[0].note == "deleted" and results[3].note == "no email"
    assert results[1].owned == OwnedState(tags=frozenset({"vip"}), remote_id="id-p1")
    assert isinstance(results[2].error, PermanentError) and results[2].owned is None  # nothing took effect
    assert adapter.steps == ["check", "write", "memberships ['p1']"]
    assert [(r.method, r.url.path) for r in seen] == [
        ("DELETE", "/contacts/p0@example.com"),
        ("POST", "/contacts/p1@example.com"),
        ("POST", "/contacts/p2@example.com"),
    ]


def test_an_erasure_refused_for_bad_credentials_stops_the_batch() -> None:
    esp, _ = client([httpx.Response(401, text="API key invalid")], SimClock())
    with pytest.raises(AuthError):
        OneCallPerContact(esp).apply([contact("p0", erase=True), contact("p1")], {})


# -- Retry-After: read strictly, capped --------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        (" 2.5 ", 2.5),
        ("0", 0.0),
        ("21600", 6 * 3600.0),
        ("100000", 6 * 3600.0),  # more than the cap: the cap
        ("9" * 400, 6 * 3600.0),  # digits beyond a float: the cap
        ("inf", None),
        ("Infinity", None),
        ("nan", None),
        ("1e309", None),
        ("1e3", None),
        ("-3", None),
        ("+5", None),
        ("soon", None),
        ("", None),
    ],
)
def test_retry_after_is_finite_non_negative_seconds_at_most_six_hours(
    header: str, seconds: float | None
) -> None:
    assert retry_after_header(httpx.Response(429, headers={"Retry-After": header})) == seconds


def test_header_numbers_are_ascii_digits() -> None:
    assert header_number(" 12 ") == 12.0 and header_number("0.5") == 0.5
    for raw in ("²", "٣", "1_000", "0x10", "1e3", "", None):
        assert header_number(raw) is None


def test_retry_after_as_an_http_date_counts_from_the_responses_date() -> None:
    sent = "Wed, 21 Oct 2015 07:28:00 GMT"

    def wait(when: str) -> float | None:
        return retry_after_header(httpx.Response(429, headers={"Retry-After": when, "Date": sent}))

    assert wait("Wed, 21 Oct 2015 07:28:40 GMT") == 40.0
    assert wait("Wed, 21 Oct 2015 07:00:00 GMT") == 0.0  # already past
    assert wait("Thu, 22 Oct 2015 07:28:00 GMT") == 6 * 3600.0  # a day away: the cap
    assert wait("Fri, 31 Dec 9999 23:59:59 GMT") == 6 * 3600.0
    assert wait("Wed, 99 Oct 2015 07:28:00 GMT") is None  # not a date
    # without the answer's own Date there is nothing to count from: the adapter's backoff applies
    assert (
        retry_after_header(httpx.Response(429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:40 GMT"}))
        is None
    )


def test_a_retry_after_that_is_not_a_finite_number_is_none() -> None:
    for value in (float("inf"), float("nan"), float("-inf")):
        assert RateLimited("429", retry_after=value).retry_after is None
    assert RateLimited("429", retry_after=-4).retry_after == 0.0


def test_an_unreadable_retry_after_uses_the_backoff_and_blocks_nothing(redis_client: redis.Redis) -> None:
    clock = SimClock()
    limiter = RateLimiter(redis_client, clock=clock, sleep=clock.sleep)
    for header in ("inf", "nan", "1e309"):
        esp, seen = client(
            [httpx.Response(429, headers={"Retry-After": header}), httpx.Response(204)], clock, limiter
        )
        esp.request("GET", "/x")
        assert len(seen) == 2 and clock.slept[-1] <= 20.0  # retried in the call after a backoff
        assert limiter.blocked_for("esp:k") == 0.0
        assert redis_client.hget("rl:esp:k", "blocked_until") is None


def test_a_huge_retry_after_blocks_the_key_six_hours_with_a_ttl(redis_client: redis.Redis) -> None:
    clock = SimClock()
    limiter = RateLimiter(redis_client, clock=clock, sleep=clock.sleep)
    esp, seen = client([httpx.Response(429, headers={"Retry-After": "100000"})], clock, limiter)
    with pytest.raises(RateLimited) as info:
        esp.request("GET", "/x")
    assert info.value.retry_after == 6 * 3600 and len(seen) == 1 and clock.slept == []
    assert limiter.blocked_for("esp:k") == 6 * 3600
    assert redis_client.ttl("rl:esp:k") > 6 * 3600
