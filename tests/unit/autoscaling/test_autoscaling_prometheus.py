"""The Prometheus metrics source: the PromQL it writes (checked by promtool where installed)
and how it turns answers into a metrics window (HTTP faked with httpx's MockTransport)."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from autoscaling_builders import NOW

from shoal.autoscaling.prometheus import (
    PrometheusSource,
    Windows,
    fleet_queries,
    parse_vector,
    result_label,
    spill_takers,
    trend,
    windows_for,
)
from shoal.devtools.testing import require

WINDOWS = Windows(short=30, long=300, rate=60)


def test_queries_cover_both_spellings_and_scope_to_the_fleet() -> None:
    q = fleet_queries("team-a", "f", ["alpha", "beta"], WINDOWS)
    # A model's LoRA adapters (``alpha:tone``) count as the model: they run on its replicas.
    assert 'namespace="team-a", fleet="f", model=~"(?:alpha|beta)(?::.+)?"' in q["request_rate"]
    assert '"model", "$1", "model", "([^:]+):.+")' in q["request_rate"]
    spellings = "vllm:num_requests_running|vllm_num_requests_running|ray_vllm_num_requests_running"
    assert spellings in q["engine_in_flight"]
    assert "llamacpp:num_requests_waiting" in q["engine_in_flight"]
    assert "rate(ray_shoal_requests_total{" in q["request_rate"]
    assert q["engine_peak"].startswith("max_over_time(avg_over_time(")
    assert "[30s:2s])[300s:20s])" in q["engine_peak"]
    assert "offset 30s" in q["demand_rate_before"]
    # Every selector, the engines' included, names the fleet's namespace and the fleet: two
    # fleets with the same model names never share a series.
    for key, promql in q.items():
        selectors = promql.count("{")
        assert promql.count('namespace="team-a", fleet="f", ') == selectors, key


def test_queries_are_valid_promql(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    require(promtool is not None, "promtool not installed (Debian package prometheus)")
    assert promtool is not None
    from shoal.operator.refit import feedback_queries
    from shoal.operator.tenants import usage_queries

    # Every query the operator sends: the autoscaler's, the refit's, the tenants' usage.
    q = fleet_queries("team-a", "f", ["alpha", "beta"], WINDOWS)
    q |= {f"feedback_{k}": v for k, v in feedback_queries("team-a", ["f", "g.h"]).items()}
    q |= {f"usage_{k}": v for k, v in usage_queries("team-a", "f").items()}
    rules = {"groups": [{"name": "g", "rules": [{"record": f"shoal:{k}", "expr": v}
                                                 for k, v in q.items()]}]}  # fmt: skip
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    out = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{len(q)} rules found" in out.stdout


def test_windows_follow_the_interval_and_the_cooldowns() -> None:
    from autoscaling_builders import spec

    w = windows_for(spec(), 15)
    assert (w.short, w.long, w.rate, w.burst, w.latest) == (30, 120, 60, 600, 15)
    assert windows_for(spec(), 15, burst_seconds=60).burst == 120  # at least the peak window
    assert windows_for(spec(), 2).long == 120  # the shortest scale-down cooldown
    assert windows_for(spec(), 200).long == 600  # at most ten minutes


def vector(label: str, values: dict[str, float | str], ts: float = 1000.0) -> dict[str, Any]:
    return {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {label: k}, "value": [ts, str(v)]} for k, v in values.items()]}}  # fmt: skip


def fake_prometheus(answers: dict[str, dict[str, Any]]) -> httpx.Client:
    """A client whose Prometheus answers each query by the query's key in fleet_queries."""
    queries = {v: k for k, v in fleet_queries("team-a", "f", ["alpha", "beta"], WINDOWS).items()}

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/query"
        key = queries[request.url.params["query"]]
        return httpx.Response(200, json=vector(result_label(key), answers.get(key, {})))

    return httpx.Client(transport=httpx.MockTransport(handler))


def test_collect_assembles_a_window() -> None:
    answers: dict[str, dict[str, Any]] = {
        "engine_in_flight": {"alpha": 10.0},
        "router_in_flight": {"alpha": 12.5},  # requests queued in front of the engine too
        "engine_peak": {"alpha": 14.0},
        "engine_waiting": {"alpha": 2.0},
        "kv_cache": {"alpha": 0.4},
        "engine_seen": {"alpha": 997.0},  # sample 3s older than the evaluation (1000)
        "request_rate": {"alpha": 3.0},
        "demand_rate": {"alpha": 3.3, "beta": 0.5},
        "ttft_p95": {"alpha": "NaN"},  # no requests in the window
        "engine_ttft_p95": {"alpha": 0.25},
    }
    src = PrometheusSource("http://prom:9090", windows=WINDOWS, client=fake_prometheus(answers))
    w = src.collect("team-a", "f", ["alpha", "beta"], NOW)
    assert w.error is None
    a, b = w.models["alpha"], w.models["beta"]
    assert a.in_flight == 12.5 and a.peak_in_flight == 14.0 and a.waiting == 2.0
    assert a.observed_at == NOW - timedelta(seconds=3)
    assert a.ttft_p95_seconds == 0.25  # the engine's, since the ingress saw no request
    assert a.kv_cache_usage == 0.4 and a.request_rate == 3.0
    assert b.in_flight is None and b.observed_at is None and b.demand_rate == 0.5


def test_collect_reads_arrivals_bursts_and_service_time() -> None:
    answers: dict[str, dict[str, Any]] = {
        "engine_in_flight": {"alpha": 20.0, "beta": 4.0},
        "engine_seen": {"alpha": 999.0, "beta": 999.0},
        "engine_running": {"alpha": 18.0, "beta": 4.0},
        "request_rate": {"alpha": 2.0, "beta": 0.5},
        # alpha: the engines' histograms; beta has none (Little's law: 4 / 0.5 = 8 s).
        "engine_e2e_mean": {"alpha": 9.5},
        "engine_ttft_mean": {"alpha": 0.5},
        "demand_rate_recent": {"alpha": 9.0, "beta": 0.5},
        "demand_rate_before": {"alpha": 7.0, "beta": 0.5},
        "demand_rate_earlier": {"alpha": 5.0, "beta": 0.5},
        "demand_rate_earliest": {"alpha": 3.0, "beta": 0.5},
        "demand_rate_peak": {"alpha": 9.5, "beta": 1.0},
        "demand_rate_latest": {"alpha": 11.0},
        "engine_waiting_latest": {"alpha": 4.0},
    }
    src = PrometheusSource("http://prom:9090", windows=WINDOWS, client=fake_prometheus(answers))
    w = src.collect("team-a", "f", ["alpha", "beta"], NOW)
    a, b = w.models["alpha"], w.models["beta"]
    assert (w.short_seconds, w.latest_seconds) == (30, 15)
    assert (a.latest_arrival_rate, a.latest_waiting) == (11.0, 4.0)
    assert b.latest_arrival_rate is None
    assert a.service_seconds == 9.0 and b.service_seconds == 8.0
    assert a.arrival_rate == 9.0 and a.peak_arrival_rate == 9.5
    assert a.arrival_trend == pytest.approx(2.0 / 30)  # a ramp: 3, 5, 7, 9 req/s
    assert b.arrival_trend == 0.0


def test_new_queries_have_their_windows() -> None:
    q = fleet_queries("team-a", "f", ["alpha"], Windows(short=30, long=300, rate=60, burst=600))
    assert "offset 90s" in q["demand_rate_earliest"]
    # The latest window: the newer half of the short one.
    assert "[15s])," in q["demand_rate_latest"] and "offset" not in q["demand_rate_latest"]
    assert "vllm:num_requests_waiting|" in q["engine_waiting_latest"]
    assert q["engine_waiting_latest"].endswith("[15s:1s])")
    assert q["demand_rate_peak"].startswith("max_over_time(sum by (model) (label_replace(")
    assert (
        '"([^:]+):.+"))[600s:40s])' in q["demand_rate_peak"] and "[30s])" in q["demand_rate_peak"]
    )
    assert "vllm:e2e_request_latency_seconds_sum{" in q["engine_e2e_mean"]
    assert (
        "/ sum by (model_name) (rate(vllm:e2e_request_latency_seconds_count{"
        in (q["engine_e2e_mean"])
    )


def test_the_spill_query_counts_pairs_over_the_burst_window() -> None:
    q = fleet_queries("team-a", "f", ["alpha"], Windows(short=30, long=300, rate=60, burst=600))
    spill = q["spill_pairs"]
    assert spill.startswith("label_join(sum by (model, to) (label_replace(")
    assert "(increase(shoal_spilled_requests_total{" in spill
    assert '"to", "$1", "to", "([^:]+):.+")' in spill  # a spill to an adapter: to its model
    assert "ray_shoal_spilled_requests_total{" in spill and "[600s])," in spill
    assert '"spill", ">", "model", "to")' in spill
    assert (result_label("spill_pairs"), result_label("demand_rate"), result_label("kv_cache")) == (
        "spill", "model", "model_name")  # fmt: skip


def test_each_model_s_taker_is_where_most_of_its_spills_went() -> None:
    pairs = {
        "alpha>beta": (1000.0, 12.0),
        "alpha>gamma": (1000.0, 3.0),
        "beta>alpha": (1000.0, 2.0),
        "beta>gamma": (1000.0, 2.0),  # a tie: the name first in order
        "gamma>alpha": (1000.0, 0.0),  # none spilled over the window
        "gamma>old": (1000.0, 9.0),  # a model no longer in the fleet
        "gamma>gamma": (1000.0, 4.0),
        "delta>alpha": (1000.0, None),
        "no-separator": (1000.0, 5.0),
    }
    assert spill_takers(pairs, ["alpha", "beta", "gamma", "delta"]) == {
        "alpha": "beta", "beta": "alpha"}  # fmt: skip
    assert spill_takers({}, ["alpha"]) == {}


def test_collect_reads_the_spill_takers() -> None:
    answers: dict[str, dict[str, Any]] = {
        "spill_pairs": {"alpha>beta": 7.0, "beta>alpha": 1.0, "alpha>zeta": 40.0},
        "engine_seen": {"alpha": 999.0},
    }
    src = PrometheusSource("http://prom:9090", windows=WINDOWS, client=fake_prometheus(answers))
    w = src.collect("team-a", "f", ["alpha", "beta"], NOW)
    assert w.spill_takers == {"alpha": "beta", "beta": "alpha"}
    none = PrometheusSource("http://prom:9090", windows=WINDOWS, client=fake_prometheus({}))
    assert none.collect("team-a", "f", ["alpha", "beta"], NOW).spill_takers == {}


def test_a_failing_prometheus_makes_the_window_an_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            400, json={"status": "error", "errorType": "bad_data", "error": "parse error"}
        )

    src = PrometheusSource("http://prom:9090", client=httpx.Client(transport=httpx.MockTransport(handler)))  # fmt: skip
    w = src.collect("team-a", "f", ["alpha"], NOW)
    assert w.error == "parse error" and w.models == {}

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    src = PrometheusSource("http://prom:9090", client=httpx.Client(transport=httpx.MockTransport(down)))  # fmt: skip
    assert "unreachable" in (src.collect("team-a", "f", ["alpha"], NOW).error or "")


def test_parse_vector_rejects_what_is_not_a_vector() -> None:
    with pytest.raises(Exception, match="expected a vector"):
        parse_vector({"status": "success", "data": {"resultType": "matrix", "result": []}}, "x")
    assert parse_vector(json.loads(json.dumps(vector("m", {"a": "+Inf"}))), "m") == {
        "a": (1000.0, None)
    }


def test_trend_counts_only_what_is_beyond_poisson_noise() -> None:
    # 3/s vs 2.8/s over 30s: 90 vs 84 arrivals, well within noise.
    assert trend(40.0, 3.0, 2.8, 30.0) == 0.0
    # 6/s vs 3/s: 180 vs 90 arrivals: in flight will double over the next window.
    assert trend(40.0, 6.0, 3.0, 30.0) == pytest.approx(40.0 / 30.0)
    assert trend(40.0, 6.0, None, 30.0) is None
