"""Read a fleet's metrics window from Prometheus with PromQL (httpx, synchronous).

Metric names, as the serving layer exports them (see :mod:`shoal.serving.metrics`):

- engines (per model, label ``model_name``): vLLM's ``vllm:num_requests_running``,
  ``vllm:num_requests_waiting``, ``vllm:gpu_cache_usage_perc`` (and vLLM v1's
  ``vllm:kv_cache_usage_perc``), ``vllm:time_to_first_token_seconds``; Shoal's simulator uses
  the same names, llama.cpp the ``llamacpp:`` prefix;
- the fleet's ingress (labels ``fleet``, ``model``, ``tier``): ``shoal_requests_in_flight``,
  ``shoal_requests_total``, ``shoal_time_to_first_token_seconds`` (what clients see),
  ``shoal_routing_decisions_total`` (demand, also for a model that is cold).

Inside Ray every name comes out through Ray's metrics agent as ``ray_<name>`` with ``:``
turned into ``_`` (``ray_vllm_num_requests_running``); and ``prometheus_client`` (which vLLM
and the simulator use) writes ``vllm_num_requests_running`` when Prometheus asks for the
OpenMetrics format. Every query accepts all three spellings.

:func:`fleet_queries` builds the PromQL (pure, unit-tested); :class:`PrometheusSource` runs
it against ``/api/v1/query`` and assembles a :class:`~shoal.autoscaling.types.MetricsWindow`.
A failed query makes the whole window an error: the policy then holds every model.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx

from shoal.api.v1alpha1 import ModelFleetSpec
from shoal.autoscaling.types import MetricsWindow, ModelMetrics

ENGINE_PREFIXES = ("vllm", "llamacpp")


def _engine_names(metric: str) -> list[str]:
    """Every spelling of an engine metric: ``vllm:x``, ``vllm_x``, ``ray_vllm_x``, and
    llama.cpp's alike."""
    out = []
    for p in ENGINE_PREFIXES:
        out += [f"{p}:{metric}", f"{p}_{metric}", f"ray_{p}_{metric}"]
    return out


def router_metric_names(metric: str) -> list[str]:
    """Both spellings of a series the ingress exports: ``shoal_x`` (prometheus_client, the
    laptop runner) and ``ray_shoal_x`` (Ray's metrics, in a cluster)."""
    return [metric, f"ray_{metric}"]


RUNNING = _engine_names("num_requests_running")
WAITING = _engine_names("num_requests_waiting")
KV_CACHE = _engine_names("gpu_cache_usage_perc") + _engine_names("kv_cache_usage_perc")
ENGINE_TTFT_BUCKETS = _engine_names("time_to_first_token_seconds_bucket")
#: (sum, count) spellings of the engines' end-to-end and first-token histograms.
ENGINE_E2E = list(
    zip(
        _engine_names("e2e_request_latency_seconds_sum"),
        _engine_names("e2e_request_latency_seconds_count"),
        strict=True,
    )
)
ENGINE_TTFT = list(
    zip(
        _engine_names("time_to_first_token_seconds_sum"),
        _engine_names("time_to_first_token_seconds_count"),
        strict=True,
    )
)
IN_FLIGHT = router_metric_names("shoal_requests_in_flight")
REQUESTS = router_metric_names("shoal_requests_total")
TTFT_BUCKETS = router_metric_names("shoal_time_to_first_token_seconds_bucket")
DECISIONS = router_metric_names("shoal_routing_decisions_total")
COST = router_metric_names("shoal_cost_usd_total")
SPILLED = router_metric_names("shoal_spilled_requests_total")
#: The label a pair query (``spill_pairs``) joins its two models into: ``first>taker``.
PAIR_LABEL = "spill"
PAIR_SEPARATOR = ">"  # not a character of a model name (``Name`` in the fleet API)


def result_label(key: str) -> str:
    """The label that keys the answer to query ``key`` of :func:`fleet_queries`: the
    ingress's series are per ``model``, the engines' per ``model_name``; a pair query's
    answers per joined pair (:data:`PAIR_LABEL`)."""
    if key.startswith("spill"):
        return PAIR_LABEL
    if key.startswith(("router", "request", "demand", "ttft")):
        return "model"
    return "model_name"


def _names_re(names: Sequence[str]) -> str:
    return "|".join(names)  # metric names hold no regex metacharacters


def _dur(seconds: float) -> str:
    return f"{max(1, round(seconds))}s"


@dataclass(frozen=True)
class Windows:
    """Look-back windows of the queries, in seconds."""

    #: Averages for scale-up decisions (load now).
    short: float = 30.0
    #: Peaks for scale-down decisions (load at its highest lately).
    long: float = 300.0
    #: Rates and latency quantiles (needs at least two scrapes).
    rate: float = 60.0
    #: How far back the busiest short-window arrival rate is looked for (burstiness).
    burst: float = 600.0
    #: The newest part of the short window, where a step in the traffic shows first.
    latest: float = 15.0

    def step(self, window: float) -> str:
        """Subquery resolution: about fifteen points per window, at least one second."""
        return _dur(max(1.0, window / 15))


def windows_for(
    spec: ModelFleetSpec, interval_seconds: float, burst_seconds: float = 600.0
) -> Windows:
    """Query windows for a fleet evaluated every ``interval_seconds``.

    Averages cover two evaluation intervals; rates and quantiles four (at least two scrapes
    at any sensible scrape interval); peaks the fleet's shortest scale-down cooldown (load
    must have stayed low that long), at least four intervals and at most ten minutes; the
    burst window (where the headroom's busiest arrival rate is looked for) is
    ``burst_seconds``, at least the peak window; the latest window is the newer half of the
    short one (one interval: the arrivals since the last evaluation).
    """
    down = min(t.autoscaling.scale_down_cooldown_seconds for t in spec.tiers)
    long = min(max(4 * interval_seconds, float(down)), 600.0)
    short = max(2 * interval_seconds, 4.0)
    return Windows(
        short=short,
        long=long,
        rate=max(4 * interval_seconds, 8.0),
        burst=max(float(burst_seconds), long),
        latest=short / 2,
    )


def fleet_scope(namespace: str, fleet: str) -> str:
    """The label matchers that keep a query to one fleet: ``namespace="ns", fleet="f"``.

    Both labels are the scrape target's, set by Kubernetes, not by the pod: the chart's
    PodMonitor writes ``namespace`` from the pod's namespace and ``fleet`` from its
    ``shoal.dev/fleet`` label, with ``honorLabels: false``, so a series that names another
    namespace or fleet itself keeps it only as ``exported_namespace``/``exported_fleet``.
    Namespace and fleet names are DNS names: nothing in them needs escaping in a string
    literal.
    """
    return f'namespace="{namespace}", fleet="{fleet}"'


#: A LoRA adapter's router series name it ``<model>:<adapter>`` (shoal.serving.adapters). It
#: runs on its base model's replicas, so its requests count towards that model: this RE2
#: pattern's group is the base model's name.
ADAPTER_OF = "([^:]+):.+"


def as_base(expr: str, label: str = "model") -> str:
    """``expr`` (an instant vector) with each adapter's ``label`` rewritten to its base
    model's name, so that ``sum by`` adds an adapter's series to its model's (pure). The
    name it had stays in ``<label>_route``: without it an adapter's series and its model's
    would have the same labels, which PromQL refuses."""
    kept = f'label_replace({expr}, "{label}_route", "$1", "{label}", "(.*)")'
    return f'label_replace({kept}, "{label}", "$1", "{label}", "{ADAPTER_OF}")'


def fleet_queries(
    namespace: str,
    fleet: str,
    models: Sequence[str],
    windows: Windows,
) -> dict[str, str]:
    """The PromQL queries of one fleet's metrics window, keyed by what they measure; every
    selector, the engines' included, is scoped to the fleet (:func:`fleet_scope`). The
    router's series of a model's LoRA adapters count as the model's (:func:`as_base`); the
    engines already count them under the model's name."""
    scope = fleet_scope(namespace, fleet)
    model_re = "|".join(models)
    eng = f'{scope}, model_name=~"{model_re}"'
    rtr = f'{scope}, model=~"(?:{model_re})(?::.+)?"'

    def engine_sel(names: Sequence[str]) -> str:
        return f'{{__name__=~"{_names_re(names)}", {eng}}}'

    def router_sel(names: Sequence[str]) -> str:
        return f'{{__name__=~"{_names_re(names)}", {rtr}}}'

    def per_name(template: str, names: Sequence[str], labels: str) -> str:
        # One term per spelling joined with `or`: functions such as rate() drop the metric
        # name, and two spellings with equal labels would otherwise collide.
        return " or ".join(template.format(sel=f"{n}{{{labels}}}") for n in names)

    s, lg, r, b, la = windows.short, windows.long, windows.rate, windows.burst, windows.latest

    def rate_by_model(window: float, offset: float = 0.0) -> str:
        # A template for per_name: the per-model rate of a router counter, adapters in.
        shift = f" offset {_dur(offset)}" if offset else ""
        return "sum by (model) (" + as_base("rate({sel}[" + _dur(window) + "]" + shift + ")") + ")"

    def mean_of(pairs: Sequence[tuple[str, str]]) -> str:
        # A histogram's mean over the rate window: rate of its sum over rate of its count.
        return " or ".join(
            f"sum by (model_name) (rate({a}{{{eng}}}[{_dur(r)}])) / "
            f"sum by (model_name) (rate({c}{{{eng}}}[{_dur(r)}]))"
            for a, c in pairs
        )

    return {
        "engine_in_flight": f"avg_over_time((sum by (model_name) "
        f"({engine_sel(RUNNING + WAITING)}))[{_dur(s)}:{windows.step(s)}])",
        # The peak of the short-window average (sustained load, not one noisy sample).
        "engine_peak": f"max_over_time(avg_over_time((sum by (model_name) "
        f"({engine_sel(RUNNING + WAITING)}))[{_dur(s)}:{windows.step(s)}])"
        f"[{_dur(lg)}:{windows.step(lg)}])",
        # Requests running (not waiting) over the rate window: with the completion rate over
        # the same window, the service time of a request (Little's law).
        "engine_running": f"avg_over_time((sum by (model_name) "
        f"({engine_sel(RUNNING)}))[{_dur(r)}:{windows.step(r)}])",
        # Mean end-to-end and first-token seconds of the requests that finished in the rate
        # window: their difference is how long a request holds a batch slot.
        "engine_e2e_mean": mean_of(ENGINE_E2E),
        "engine_ttft_mean": mean_of(ENGINE_TTFT),
        "engine_waiting": f"avg_over_time((sum by (model_name) "
        f"({engine_sel(WAITING)}))[{_dur(s)}:{windows.step(s)}])",
        # The queue over the latest window only: while it grows, the short window's
        # average lags it by half a window.
        "engine_waiting_latest": f"avg_over_time((sum by (model_name) "
        f"({engine_sel(WAITING)}))[{_dur(la)}:{windows.step(la)}])",
        "kv_cache": f"max_over_time((max by (model_name) "
        f"({engine_sel(KV_CACHE)}))[{_dur(s)}:{windows.step(s)}])",
        "engine_seen": per_name("max by (model_name) (timestamp({sel}))", RUNNING, eng),
        "router_in_flight": f"avg_over_time((sum by (model) "
        f"({as_base(router_sel(IN_FLIGHT))}))[{_dur(s)}:{windows.step(s)}])",
        "router_peak": f"max_over_time(avg_over_time((sum by (model) "
        f"({as_base(router_sel(IN_FLIGHT))}))[{_dur(s)}:{windows.step(s)}])"
        f"[{_dur(lg)}:{windows.step(lg)}])",
        "request_rate": per_name(rate_by_model(r), REQUESTS, rtr),
        # USD per second the fleet's answers cost, per model (an external model's is what
        # its endpoint bills; the fleet budget counts it beside the replicas).
        "spend_rate": per_name(rate_by_model(r), COST, rtr),
        "demand_rate": per_name(rate_by_model(r), DECISIONS, rtr),
        # Arrivals over the last short window and the one before it: their ratio is the
        # trend (arrivals lead in-flight requests).
        "demand_rate_recent": per_name(rate_by_model(s), DECISIONS, rtr),
        # Arrivals since the last evaluation: a step shows here in full first.
        "demand_rate_latest": per_name(rate_by_model(la), DECISIONS, rtr),
        "demand_rate_before": per_name(rate_by_model(s, offset=s), DECISIONS, rtr),
        # And the two windows before that: a rise in all three steps is a ramp; a step in
        # the rate shows as a rise in at most two (see rate_trend).
        "demand_rate_earlier": per_name(rate_by_model(s, offset=2 * s), DECISIONS, rtr),
        "demand_rate_earliest": per_name(rate_by_model(s, offset=3 * s), DECISIONS, rtr),
        # The busiest short-window arrival rate of the burst window (burstiness).
        "demand_rate_peak": per_name(
            f"max_over_time({rate_by_model(s)}[{_dur(b)}:{windows.step(b)}])", DECISIONS, rtr
        ),
        # Requests spilled over the burst window, per first choice and the model that took
        # them (one label, ``first>taker``): the usual taker of each model is the one the
        # autoscaler's spillover bridge sizes (policy.bridge_spill).
        "spill_pairs": " or ".join(
            f"label_join(sum by (model, to) "
            f"({as_base(as_base(f'increase({n}{{{rtr}}}[{_dur(b)}])'), 'to')}), "
            f'"{PAIR_LABEL}", "{PAIR_SEPARATOR}", "model", "to")'
            for n in SPILLED
        ),
        "ttft_p95": per_name(
            "histogram_quantile(0.95, sum by (model, le) ("
            + as_base("rate({sel}[" + _dur(r) + "])")
            + "))",
            TTFT_BUCKETS,
            rtr,
        ),
        "engine_ttft_p95": per_name(
            "histogram_quantile(0.95, sum by (model_name, le) (rate({sel}[" + _dur(r) + "])))",
            ENGINE_TTFT_BUCKETS,
            eng,
        ),
    }


class PrometheusError(Exception):
    """Prometheus could not answer a query."""


def _number(raw: Any) -> float | None:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) or math.isinf(value) else value


def parse_vector(body: Any, label: str) -> dict[str, tuple[float, float | None]]:
    """``{label value: (evaluation time, value)}`` from an instant-query response body."""
    if not isinstance(body, dict) or body.get("status") != "success":
        error = body.get("error") if isinstance(body, dict) else None
        raise PrometheusError(str(error or "malformed response"))
    data = body.get("data") or {}
    if data.get("resultType") != "vector":
        raise PrometheusError(f"expected a vector, got {data.get('resultType')!r}")
    out: dict[str, tuple[float, float | None]] = {}
    for item in data.get("result") or []:
        key = (item.get("metric") or {}).get(label)
        ts, raw = item.get("value") or (None, None)
        if key is None or ts is None:
            continue
        out[str(key)] = (float(ts), _number(raw))
    return out


class PrometheusSource:
    """Metrics windows of fleets from a Prometheus server (``/api/v1/query``)."""

    def __init__(
        self,
        url: str,
        *,
        windows: Windows | None = None,
        timeout: float = 5.0,
        client: httpx.Client | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.windows = windows or Windows()
        self._client = client or httpx.Client(timeout=timeout)

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()

    def query(self, promql: str, label: str) -> dict[str, tuple[float, float | None]]:
        """Run one instant query; results keyed by ``label``."""
        try:
            resp = self._client.get(f"{self.url}/api/v1/query", params={"query": promql})
        except httpx.HTTPError as exc:
            raise PrometheusError(f"{self.url} unreachable: {exc}") from exc
        try:
            body = resp.json()
        except ValueError as exc:
            raise PrometheusError(f"HTTP {resp.status_code}, not JSON") from exc
        return parse_vector(body, label)

    def collect(
        self,
        namespace: str,
        fleet: str,
        models: Sequence[str],
        now: datetime,
        windows: Windows | None = None,
    ) -> MetricsWindow:
        """The metrics window of fleet ``namespace/fleet``; ``error`` set (and nothing else)
        when a query fails."""
        queries = fleet_queries(namespace, fleet, models, windows or self.windows)
        results: dict[str, dict[str, tuple[float, float | None]]] = {}
        try:
            for key, promql in queries.items():
                results[key] = self.query(promql, result_label(key))
        except PrometheusError as exc:
            return MetricsWindow(collected_at=now, error=str(exc))
        return assemble(models, results, now, windows or self.windows)


def trend(
    in_flight: float | None,
    rate: float | None,
    before: float | None,
    window: float,
    z: float = 2.0,
) -> float | None:
    """Growth of in-flight requests per second implied by the arrival rate's growth between
    two consecutive windows of ``window`` seconds; None when either rate is unknown.

    Arrival counts are Poisson: a change smaller than ``z`` standard deviations of the two
    windows' counts is noise, reported as no trend (0), so a steady load does not make
    replicas flap.
    """
    if in_flight is None or rate is None or not before:
        return None
    now_n, before_n = rate * window, before * window
    if abs(now_n - before_n) <= z * math.sqrt(now_n + before_n):
        return 0.0
    return in_flight * (rate / before - 1.0) / window


def rate_trend(rates: Sequence[float | None], window: float, z: float = 1.0) -> float | None:
    """How fast the arrival rate rises, per second, from consecutive windows of ``window``
    seconds (``rates``: newest first); None when a rate is unknown.

    Only a rise seen between every pair of neighbouring windows counts, at the smallest: that
    is a ramp, which goes on while new replicas start. A step in the rate is smeared over one
    window's width by the averaging, so it shows as a rise between at most two neighbours
    (four windows tell the two apart); its new level is in the newest rate already, and
    projecting it would size for a rate that never comes. A change within ``z`` standard
    deviations of the Poisson counts is noise (0); so is a fall (scale-down has its own,
    slower rule).
    """
    if len(rates) < 2 or any(r is None for r in rates):
        return None
    known = [float(r) for r in rates if r is not None]

    def rise(new: float, old: float) -> float:
        a, b = new * window, old * window
        return 0.0 if a - b <= z * math.sqrt(a + b) else (new - old) / window

    return min(rise(new, old) for new, old in itertools.pairwise(known))


def service_seconds(
    e2e: float | None,
    first_token: float | None,
    running: float | None = None,
    completions: float | None = None,
) -> float | None:
    """Mean seconds a request holds a batch slot: the engines' mean end-to-end time less
    their mean time to first token (which holds the wait for a slot) of the requests that
    finished lately; without those histograms, Little's law (requests running over
    completions per second, biased upwards while load rises). None when neither is known."""
    if e2e is not None and first_token is not None and e2e > first_token:
        return e2e - first_token
    if running is None or completions is None or completions <= 0 or running <= 0:
        return None
    return running / completions


def spill_takers(
    pairs: dict[str, tuple[float, float | None]], models: Sequence[str]
) -> dict[str, str]:
    """Per model of ``models``, the model of ``models`` its spilled requests went to most
    (the ``spill_pairs`` answers, keyed ``first>taker``; a tie goes to the name first in
    order). A pair with no spilled request, or naming a model outside the fleet, counts
    for nothing."""
    fleet = set(models)
    counts: dict[str, dict[str, float]] = {}
    for pair, (_, value) in pairs.items():
        first, sep, taker = pair.partition(PAIR_SEPARATOR)
        if not sep or first == taker or value is None or value <= 0:
            continue
        if first in fleet and taker in fleet:
            counts.setdefault(first, {})[taker] = value
    return {
        first: min(takers, key=lambda t: (-takers[t], t))
        for first, takers in sorted(counts.items())
    }


def _per_hour(per_second: float | None) -> float | None:
    return None if per_second is None else 3600.0 * per_second


def assemble(
    models: Sequence[str],
    results: dict[str, dict[str, tuple[float, float | None]]],
    now: datetime,
    windows: Windows,
) -> MetricsWindow:
    """A :class:`MetricsWindow` from the query results of :func:`fleet_queries` over
    ``windows`` (the arrival trend is measured over its short window)."""
    window = windows.short

    def val(key: str, model: str) -> float | None:
        hit = results.get(key, {}).get(model)
        return hit[1] if hit else None

    def larger(a: float | None, b: float | None) -> float | None:
        return b if a is None else a if b is None else max(a, b)

    out = {}
    for m in models:
        in_flight = larger(val("engine_in_flight", m), val("router_in_flight", m))
        seen = results.get("engine_seen", {}).get(m)
        observed_at = None
        if seen is not None and seen[1] is not None:
            observed_at = now - timedelta(seconds=max(0.0, seen[0] - seen[1]))
        out[m] = ModelMetrics(
            # The ingress counts requests queued in front of the engines too; take the larger.
            in_flight=in_flight,
            peak_in_flight=larger(val("engine_peak", m), val("router_peak", m)),
            in_flight_trend=trend(
                in_flight, val("demand_rate_recent", m), val("demand_rate_before", m), window
            ),
            waiting=val("engine_waiting", m),
            request_rate=val("request_rate", m),
            demand_rate=val("demand_rate", m),
            ttft_p95_seconds=val("ttft_p95", m)
            if val("ttft_p95", m) is not None
            else val("engine_ttft_p95", m),
            kv_cache_usage=val("kv_cache", m),
            observed_at=observed_at,
            arrival_rate=val("demand_rate_recent", m),
            arrival_trend=rate_trend(
                [
                    val(k, m)
                    for k in (
                        "demand_rate_recent",
                        "demand_rate_before",
                        "demand_rate_earlier",
                        "demand_rate_earliest",
                    )
                ],
                window,
            ),
            peak_arrival_rate=val("demand_rate_peak", m),
            service_seconds=service_seconds(
                val("engine_e2e_mean", m),
                val("engine_ttft_mean", m),
                val("engine_running", m),
                val("request_rate", m),
            ),
            latest_arrival_rate=val("demand_rate_latest", m),
            latest_waiting=val("engine_waiting_latest", m),
            spend_per_hour=_per_hour(val("spend_rate", m)),
        )
    return MetricsWindow(
        collected_at=now,
        models=out,
        short_seconds=window,
        latest_seconds=windows.latest,
        spill_takers=spill_takers(results.get("spill_pairs", {}), models),
    )
