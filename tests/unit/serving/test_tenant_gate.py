"""The tenant gate's pure pieces: windows, headers, authentication, limits, alpha under
budget, the shared store's split of headroom, and the failure modes (no Ray here; the
integration tests run the same code in Ray Serve)."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest

from shoal.contract import AccessConfig, TenantAccess, key_digest
from shoal.serving.openai_api import ApiError
from shoal.serving.tenants import (
    TenantGate,
    TenantRefused,
    Window,
    budget_alpha,
    format_reset,
    parse_bearer,
)
from shoal.serving.usage import LocalStore, UsageStore, UsageSync, grant_lease

KEY_A = "a" * 40
KEY_B = "b" * 40


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def config(**tenant: Any) -> AccessConfig:
    a = {"name": "a", "key_digests": [key_digest(KEY_A)], **tenant}
    return AccessConfig.model_validate(
        {
            "mode": "tenants",
            "tenants": [a, {"name": "b", "key_digests": [key_digest(KEY_B)]}],
        }
    )


def test_window_slides_and_says_when_it_frees() -> None:
    w = Window(60.0, 60)
    w.add(2, 100.0)
    w.add(3, 130.5)
    assert w.used(130.9) == 5
    assert w.reset_after(131.0) == pytest.approx(29.0)  # the first two leave at 160
    assert w.used(160.0) == 3
    assert w.used(191.0) == 0 and w.reset_after(191.0) == 0
    w.add(5, 200.0)
    w.add(-7, 200.2)  # a correction never goes below zero
    assert w.used(200.3) == 0
    w.add(1, 10_000.0)  # a long gap clears everything at once
    assert w.used(10_000.0) == 1


def test_reset_headers_are_written_as_openai_writes_them() -> None:
    assert format_reset(0.02) == "20ms"
    assert format_reset(1.0) == "1s"
    assert format_reset(59.2) == "1m0s"
    assert format_reset(360) == "6m0s"


def test_bearer_keys_are_read_and_checked() -> None:
    assert parse_bearer("Bearer abc") == "abc"
    assert parse_bearer("bearer  abc ") == "abc"
    assert parse_bearer("Basic abc") is None
    assert parse_bearer("Bearer ") is None and parse_bearer(None) is None
    gate = TenantGate(config())
    assert gate.authenticate(f"Bearer {KEY_A}").spec.name == "a"
    assert gate.authenticate(f"Bearer {KEY_B}").spec.name == "b"
    for header, message in [(None, "didn't provide"), ("Bearer " + "c" * 40, "Incorrect")]:
        with pytest.raises(ApiError) as err:
            gate.authenticate(header)
        assert err.value.status == 401 and err.value.code == "invalid_api_key"
        assert message in err.value.message and "c" * 40 not in err.value.message


def test_request_rate_is_refused_with_openai_headers() -> None:
    clock = Clock()
    gate = TenantGate(config(limits={"requests_per_minute": 3}), clock=clock)
    a = gate.authenticate(f"Bearer {KEY_A}")
    tickets = [gate.admit(a, 5) for _ in range(3)]
    assert tickets[0].headers["x-ratelimit-limit-requests"] == "3"
    assert [t.headers["x-ratelimit-remaining-requests"] for t in tickets] == ["2", "1", "0"]
    clock.now += 10
    with pytest.raises(TenantRefused) as err:
        gate.admit(a, 5)
    e = err.value
    assert (e.status, e.code, e.type, e.reason) == (
        429,
        "rate_limit_exceeded",
        "requests",
        "requests",
    )
    assert e.headers["x-ratelimit-remaining-requests"] == "0"
    assert e.headers["x-ratelimit-reset-requests"] == "50s"
    assert e.headers["retry-after"] == "50"
    b = gate.authenticate(f"Bearer {KEY_B}")
    assert gate.admit(b, 5).headers == {}  # b has no limits
    clock.now += 51
    gate.admit(a, 5)


def test_tokens_count_prompt_at_admission_and_the_answer_after() -> None:
    clock = Clock()
    gate = TenantGate(config(limits={"tokens_per_minute": 100}), clock=clock)
    a = gate.authenticate(f"Bearer {KEY_A}")
    t = gate.admit(a, 30)
    assert t.headers["x-ratelimit-remaining-tokens"] == "70"
    gate.finish(t, 30 + 50, 0.0)  # the engine counted 30 prompt and 50 completion tokens
    assert a.tokens.used(clock.now) == 80
    with pytest.raises(TenantRefused) as err:
        gate.admit(a, 30)
    assert err.value.reason == "tokens" and err.value.type == "tokens"
    assert err.value.headers["x-ratelimit-limit-tokens"] == "100"
    gate.admit(a, 20)


def test_concurrency_is_released_when_a_request_ends() -> None:
    gate = TenantGate(config(limits={"concurrent_requests": 1}))
    a = gate.authenticate(f"Bearer {KEY_A}")
    t = gate.admit(a, 1)
    with pytest.raises(TenantRefused) as err:
        gate.admit(a, 1)
    assert err.value.reason == "concurrency"
    gate.finish(t, None, 0.0)
    gate.finish(t, None, 0.0)  # twice is once
    assert a.in_flight == 0
    gate.admit(a, 1)


def test_alpha_falls_towards_the_floor_as_the_budget_runs_out() -> None:
    assert budget_alpha(0.8, 0.0, 1.0, 50, 0.2, None) == 0.8
    assert budget_alpha(0.8, 0.5, 1.0, 50, 0.2, None) == 0.8
    assert budget_alpha(0.8, 0.75, 1.0, 50, 0.2, None) == pytest.approx(0.5)
    assert budget_alpha(0.8, 1.0, 1.0, 50, 0.2, None) == pytest.approx(0.2)
    assert budget_alpha(0.8, 0.9, 1.0, 50, None, None) == pytest.approx(0.16)
    # the tenant's bounds hold always (a request's own alpha included)
    assert budget_alpha(1.0, 0.0, None, 80, None, 0.6) == 0.6
    assert budget_alpha(0.0, 0.0, None, 80, 0.3, None) == 0.3


def test_budget_lowers_alpha_then_refuses_with_insufficient_quota() -> None:
    clock = Clock()
    gate = TenantGate(
        config(max_cost_per_hour="1.00", budget_soft_percent=50, min_alpha=0.1, max_alpha=0.9),
        clock=clock,
    )
    a = gate.authenticate(f"Bearer {KEY_A}")
    assert gate.alpha(a, 1.0) == 0.9
    t = gate.admit(a, 1)
    gate.finish(t, 2, 0.75)
    assert gate.alpha(a, 1.0) == pytest.approx(0.5)
    t = gate.admit(a, 1)
    gate.finish(t, 2, 0.30)
    with pytest.raises(TenantRefused) as err:
        gate.admit(a, 1)
    e = err.value
    assert (e.status, e.code, e.type) == (429, "insufficient_quota", "insufficient_quota")
    assert int(e.headers["retry-after"]) > 3000  # the spending leaves the hour in ~an hour


def test_reconfigure_keeps_counters_of_tenants_that_remain() -> None:
    gate = TenantGate(config(limits={"requests_per_minute": 2}))
    a = gate.authenticate(f"Bearer {KEY_A}")
    gate.admit(a, 1)
    new_key = "n" * 40
    rotated = AccessConfig(
        mode="tenants",
        tenants=[TenantAccess(name="a", key_digests=[key_digest(new_key)], limits=a.spec.limits)],
    )
    gate.configure(rotated)
    with pytest.raises(ApiError):
        gate.authenticate(f"Bearer {KEY_A}")  # the old key is gone
    with pytest.raises(ApiError):
        gate.authenticate(f"Bearer {KEY_B}")  # so is tenant b
    same = gate.authenticate(f"Bearer {new_key}")
    assert same is a
    gate.admit(a, 1)
    with pytest.raises(TenantRefused):
        gate.admit(a, 1)  # the request before the rotation still counts


def test_store_splits_headroom_so_replicas_together_stay_within_the_limit() -> None:
    clock = Clock()
    store = UsageStore(clock=clock)
    limits = {"a": (100, None)}
    first = store.sync("r1", limits, {}, 2)["a"]
    assert first.allow_requests == 50  # the replica not seen yet keeps its part
    busy = store.sync("r2", limits, {"a": (50, 0, 0.0, 0.0, 0)}, 2)["a"]
    assert busy.allow_requests == 50  # what r1's lease leaves
    quiet = store.sync("r1", limits, {}, 2)["a"]
    assert quiet.allow_requests + busy.allow_requests <= 100
    busy = store.sync("r2", limits, {}, 2)["a"]
    assert busy.allow_requests > quiet.allow_requests >= 1  # a quiet replica keeps a part
    assert quiet.allow_requests + busy.allow_requests <= 100
    snap = store.sync("r2", limits, {"a": (60, 60, 0.0, 0.0, 3)}, 2)["a"]
    assert snap.requests == 60 and snap.allow_requests + quiet.allow_requests <= 40
    assert store.sync("r1", limits, {}, 2)["a"].others_in_flight == 3


def test_a_lost_replica_s_grant_is_free_again_when_its_lease_ends() -> None:
    clock = Clock()
    store = UsageStore(clock=clock)
    limits = {"a": (50, None)}
    lease = grant_lease(0.2)
    old = store.sync("r-old", limits, {"a": (3, 3, 0.0, 0.0, 0)}, 1, lease)["a"]
    assert old.allow_requests == 47  # the fleet's one replica holds the whole headroom
    # That replica is lost; Ray Serve's new one syncs before the old grant's lease ends ...
    clock.now += 0.5
    assert store.sync("r-new", limits, {}, 1, lease)["a"].allow_requests == 0
    # ... and gets the headroom once it has ended (long before the old replica is stale).
    clock.now += lease
    assert store.sync("r-new", limits, {}, 1, lease)["a"].allow_requests == 47


def test_a_replica_that_syncs_seldom_stays_counted_between_its_syncs() -> None:
    clock = Clock()
    store = UsageStore(clock=clock)
    limits = {"a": (None, None)}
    store.sync("r1", limits, {"a": (1, 1, 0.0, 0.0, 3)}, 2, grant_lease(8.0))
    clock.now += 7.5  # past REPLICA_STALE_SECONDS, within r1's next sync
    assert store.sync("r2", limits, {}, 2, grant_lease(0.2))["a"].others_in_flight == 3
    clock.now += 2 * grant_lease(8.0)
    assert store.sync("r2", limits, {}, 2, grant_lease(0.2))["a"].others_in_flight == 0


def test_a_replica_admits_nothing_more_on_a_grant_whose_lease_ended() -> None:
    clock = Clock()
    gate = TenantGate(config(limits={"requests_per_minute": 10}), replicas=1, clock=clock)
    sync = UsageSync(gate, LocalStore(UsageStore(clock=clock)), "r0")
    a = gate.authenticate(f"Bearer {KEY_A}")
    asyncio.run(sync.sync_once())
    gate.admit(a, 1)
    clock.now += grant_lease(gate.config.sync_interval_seconds)  # no sync answered since
    with pytest.raises(TenantRefused) as err:
        gate.admit(a, 1)
    assert err.value.granted_out  # the fleet has headroom: the next sync grants it
    asyncio.run(sync.sync_once())
    gate.admit(a, 1)


def test_a_spent_budget_is_the_refusal_told_even_over_a_rate_limit() -> None:
    clock = Clock()
    gate = TenantGate(
        config(limits={"requests_per_minute": 1}, max_cost_per_hour="1"), replicas=1, clock=clock
    )
    a = gate.authenticate(f"Bearer {KEY_A}")
    gate.finish(gate.admit(a, 1), tokens=10, cost=2.0)
    with pytest.raises(TenantRefused) as err:
        gate.admit(a, 1)  # over its request rate as well
    assert err.value.code == "insufficient_quota"
    assert not err.value.granted_out


def two_replicas(cfg: AccessConfig, clock: Clock) -> tuple[list[TenantGate], list[UsageSync]]:
    store = LocalStore(UsageStore(clock=clock))
    gates = [TenantGate(cfg, replicas=2, clock=clock) for _ in range(2)]
    syncs = [UsageSync(g, store, f"r{i}") for i, g in enumerate(gates)]
    return gates, syncs


def test_two_replicas_under_uneven_load_admit_the_limit() -> None:
    clock = Clock()
    gates, syncs = two_replicas(config(limits={"requests_per_minute": 100}), clock)

    async def run() -> int:
        admitted = 0
        for _ in range(60):  # 60 syncs, 0.2 s apart; 9 of every 10 requests on replica 0
            for s in syncs:
                await s.sync_once()
            for i in range(10):
                g = gates[0 if i else 1]
                try:
                    g.admit(g.authenticate(f"Bearer {KEY_A}"), 1)
                    admitted += 1
                except TenantRefused:
                    pass
            clock.now += 0.2
        return admitted

    assert 95 <= asyncio.run(run()) <= 100  # grants are leases: never above the limit


@pytest.mark.parametrize("mode", ["share", "open", "closed"])
def test_without_the_store_the_failure_mode_applies(mode: str) -> None:
    clock = Clock()
    cfg = config(limits={"requests_per_minute": 10}).model_copy(update={"store_failure_mode": mode})
    gate = TenantGate(cfg, replicas=2, clock=clock)
    gate.store_up = False
    a = gate.authenticate(f"Bearer {KEY_A}")
    admitted = 0
    for _ in range(20):
        try:
            gate.admit(a, 1)
            admitted += 1
        except TenantRefused as err:
            assert err.status == (503 if mode == "closed" else 429)
    assert admitted == {"share": 5, "open": 10, "closed": 0}[mode]
    b = gate.authenticate(f"Bearer {KEY_B}")
    gate.admit(b, 1)  # an unlimited tenant is served in every mode


def test_a_failed_sync_turns_the_failure_mode_on_and_keeps_the_usage() -> None:
    class DownStore:
        async def sync(self, *_: Any) -> Any:
            raise ConnectionError("store gone")

        def recreate(self) -> None:
            pass

    gate = TenantGate(config(limits={"requests_per_minute": 10}), replicas=1)
    sync = UsageSync(gate, DownStore(), "r0")
    a = gate.authenticate(f"Bearer {KEY_A}")
    gate.admit(a, 1)
    assert asyncio.run(sync.sync_once()) is False
    assert gate.store_up is False and a.pending.requests == 1


def test_budget_is_a_decimal_and_open_mode_has_no_gate() -> None:
    cfg = config(max_cost_per_hour="0.50")
    assert cfg.tenants[0].max_cost_per_hour == Decimal("0.50")
    assert AccessConfig.from_user_config(None).mode == "open"


def test_a_replica_whose_grant_ran_out_gets_more_once_the_other_s_lease_shrinks() -> None:
    clock = Clock()
    gates, syncs = two_replicas(config(limits={"requests_per_minute": 4}), clock)

    async def run() -> None:
        for s in syncs:
            await s.sync_once()
        g = gates[0]
        a = g.authenticate(f"Bearer {KEY_A}")
        g.admit(a, 1)
        g.admit(a, 1)  # its grant: half of the 4
        with pytest.raises(TenantRefused) as err:
            g.admit(a, 1)
        assert err.value.granted_out  # the fleet has headroom: worth waiting for a sync
        for s in [*syncs, *syncs]:  # the quiet replica's lease shrinks, the busy one's grows
            await s.sync_once()
        g.admit(a, 1)
        g.admit(a, 1)
        with pytest.raises(TenantRefused) as err:
            g.admit(a, 1)
        assert not err.value.granted_out  # the fleet is at its limit

    asyncio.run(run())


def test_a_request_whose_end_was_never_told_frees_its_slot_in_time() -> None:
    clock = Clock()
    gate = TenantGate(
        config(limits={"concurrent_requests": 1}), clock=clock, max_request_seconds=360
    )
    a = gate.authenticate(f"Bearer {KEY_A}")
    lost = gate.admit(a, 1)  # its client went away before its stream began
    clock.now += 100
    with pytest.raises(TenantRefused):
        gate.admit(a, 1)
    clock.now += 300
    t = gate.admit(a, 1)
    gate.finish(lost, None, 0.0)  # told late: counts nothing twice
    assert a.in_flight == 1
    gate.finish(t, None, 0.0)
    assert a.in_flight == 0
