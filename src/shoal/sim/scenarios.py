"""The simulation study's scenarios: one fleet, three traffic patterns.

The fleet has three 7B specialists on a "large" GPU tier (math, code, general) and a 3B
generalist on a "small" one, routed by a cluster router fitted on calibration prompts of
each topic (the specialists are best on their topic; the generalist is cheapest). Latency
comes from :class:`~shoal.serving.engines.latency.LatencyModel` with per-tier parameters in
the range a 7B model shows on one mid-range GPU (about 20 ms per decode step plus half a
millisecond per sequence in the batch, 32 sequences at most); replicas take 30 s to
start on the large tier (weights cached on a node that is up), 15 s on the small one.
Tiers aim at 26 (large) and 39 (small) requests in flight per replica.
Prompts are 64 to 1024 tokens, answers 128 to 512.

- ``bursty``: two hours of steady traffic; every 40 minutes each topic bursts to 3.5 times
  its base rate (4-minute ramps, four minutes at the top), topics at different times.
- ``diurnal``: a day of traffic that follows a daily cycle per topic (peaks at different
  hours, a night-time trough at a tenth of the peak).
- ``step`` (sharp): two hours of steady traffic; twice, one topic's traffic jumps at once
  to six times its rate and decays back over 15 minutes.
- ``spike`` (sharp): two hours of steady traffic; twice, every topic jumps at once to four
  times its rate for three minutes and drops back at once.
- ``flash-crowd`` (sharp, held out: no setting was tuned on it): two hours of steady
  traffic; math traffic jumps at once to six times its rate (decaying over 15 minutes),
  and an hour later every topic jumps at once to four times its rate for three minutes.
- ``hybrid``: the bursty traffic with a frontier model served outside the fleet beside it
  (priced per token, the fleet's savings reference), under a budget the frontier's bills
  count against.
- ``hot-topic``: a new topic (questions about a just-released library) appears and grows
  on top of steady traffic, under a budget that binds at its height: the autoscaler lowers
  the router's alpha, sending more general traffic to the cheap generalist.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shoal.api.v1alpha1 import ModelFleetSpec
from shoal.serving.engines.latency import LatencyModel
from shoal.sim.workload import Bursts, Constant, Diurnal, Step, Sum, Topic

LARGE = LatencyModel(
    base_step_seconds=0.020,
    per_sequence_seconds=0.0005,
    per_prefill_token_seconds=0.00005,
    max_batch=32,
    max_waiting=1_000_000,
)
SMALL = LatencyModel(
    base_step_seconds=0.010,
    per_sequence_seconds=0.0003,
    per_prefill_token_seconds=0.00002,
    max_batch=48,
    max_waiting=1_000_000,
)
MODELS = {"math-7b": "large", "code-7b": "large", "general-7b": "large", "mini-3b": "small"}
ENGINES = {"large": LARGE, "small": SMALL}
COLD_START = {"large": 30.0, "small": 15.0}
#: USD per query the router's calibration data carries (large about four times small).
COST_PER_QUERY = {"math-7b": 0.0004, "code-7b": 0.0004, "general-7b": 0.0004, "mini-3b": 0.0001}

MATH = (
    "What is {i} times 17 plus 3? Show the arithmetic step by step.",
    "Solve for x: {i}x + 5 = 2x - 7. Explain each step.",
    "Compute the derivative of x^{i} + sin(x) and simplify.",
    "A train leaves at {i} km/h; how long does it take to travel 300 km?",
)
CODE = (
    "Write a Python function that parses a CSV line with {i} quoted fields.",
    "Fix the bug in this JavaScript loop that runs {i} times and leaks memory.",
    "Implement a binary search over a sorted Go slice of {i} integers.",
    "Write a SQL query that returns the top {i} customers by revenue.",
)
GENERAL = (
    "Summarise the history of the printing press in {i} sentences.",
    "Write a polite email declining meeting number {i} next week.",
    "What are {i} good tips for a first trip to Lisbon?",
    "Explain why the sky is blue to a child aged {i}.",
)
LIBRARY = (
    "How do I migrate my app to version {i} of the new FrameKit release?",
    "FrameKit {i}.0 throws a hydration error on startup; how do I fix it?",
    "Show a FrameKit {i} example with server components and streaming.",
    "What changed in FrameKit routing in release {i}?",
)

QUALITY = {
    "math": {"math-7b": 0.86, "code-7b": 0.55, "general-7b": 0.62, "mini-3b": 0.50},
    "code": {"math-7b": 0.52, "code-7b": 0.84, "general-7b": 0.58, "mini-3b": 0.45},
    "general": {"math-7b": 0.60, "code-7b": 0.57, "general-7b": 0.80, "mini-3b": 0.68},
    "library": {"math-7b": 0.40, "code-7b": 0.78, "general-7b": 0.55, "mini-3b": 0.42},
}


#: The hybrid scenario's frontier model, served outside the fleet and priced per token (a
#: GPT-4o-like list price), and its quality per topic (above every model of the fleet).
FRONTIER = "frontier"
FRONTIER_PRICE = {"inputPerMillion": "2.50", "outputPerMillion": "10.00"}
FRONTIER_QUALITY = {"math": 0.87, "code": 0.97, "general": 0.81, "library": 0.91}
#: Seconds to the frontier model's first token (its capacity is its provider's).
FRONTIER_FIRST_TOKEN_SECONDS = 0.6


def fleet_spec(
    *,
    budget: str | None = None,
    up_cooldown: int = 15,
    down_cooldown: int = 120,
    target: int = 26,
    frontier: bool = False,
) -> ModelFleetSpec:
    """The study's fleet: a large tier ($2.50/h a replica) and a small one ($0.60/h); with
    ``frontier``, also a model served outside the fleet (a "frontier" tier, per token) that
    is the fleet's savings reference."""

    def tier(name: str, cost: str, target: int) -> dict[str, Any]:
        return {
            "name": name, "costPerReplicaHour": cost,
            "slo": {"ttftP95Milliseconds": 1000},
            "autoscaling": {"minReplicas": 1, "maxReplicas": 32, "targetOngoingRequests": target,
                            "scaleUpCooldownSeconds": up_cooldown,
                            "scaleDownCooldownSeconds": down_cooldown},
        }  # fmt: skip

    body: dict[str, Any] = {
        "routingPolicyRef": {"name": "study"},
        "tiers": [tier("large", "2.50", target), tier("small", "0.60", target * 3 // 2)],
        "models": [{"name": m, "engine": "simulated", "tier": t} for m, t in MODELS.items()],
    }
    if budget:
        body["budget"] = {"maxCostPerHour": budget, "minAlpha": "0.3"}
    if frontier:
        body["tiers"].append(
            {"name": "frontier", "costPerReplicaHour": "0", "slo": {"ttftP95Milliseconds": 1000}}
        )
        body["models"].append(
            {
                "name": FRONTIER,
                "engine": "openai",
                "tier": "frontier",
                "external": {
                    "baseUrl": "https://api.example.com/v1",
                    "model": "frontier",
                    "price": FRONTIER_PRICE,
                },
            }
        )
        body["savings"] = {"referenceModel": FRONTIER}
    return ModelFleetSpec.model_validate(body)


@dataclass(frozen=True)
class Scenario:
    """A fleet, its traffic and how long to run it."""

    name: str
    description: str
    spec: ModelFleetSpec
    topics: tuple[Topic, ...]
    duration: float
    policy_alpha: float = 0.7
    interval_seconds: float = 15.0
    scrape_seconds: float = 5.0
    engines: dict[str, LatencyModel] = field(default_factory=lambda: dict(ENGINES))
    cold_start: dict[str, float] = field(default_factory=lambda: dict(COLD_START))


def _topic(
    name: str,
    templates: tuple[str, ...],
    shape: Any,
    answers: tuple[int, int] = (128, 512),
    frontier: bool = False,
) -> Topic:
    quality = dict(QUALITY[name])
    if frontier:
        quality[FRONTIER] = FRONTIER_QUALITY[name]
    return Topic(
        name=name,
        templates=templates,
        quality=quality,
        shape=shape,
        prompt_tokens=(64, 1024),
        output_tokens=answers,
    )


def bursty() -> Scenario:
    minute = 60.0

    def bursts(rps: float, *starts: float) -> Bursts:
        return Bursts(rps, tuple(m * minute for m in starts), hold=240.0, ramp=240.0)

    return Scenario(
        name="bursty",
        description="2 h of steady traffic; every 40 minutes each topic bursts to 3.5x its "
        "base rate (4-minute ramps, 4 minutes at the top), topics at different times",
        spec=fleet_spec(),
        topics=(
            _topic("math", MATH, Sum((Constant(3.0), bursts(7.5, 25, 65, 105)))),
            _topic("code", CODE, Sum((Constant(4.0), bursts(10.0, 10, 50, 90)))),
            _topic("general", GENERAL, Sum((Constant(3.0), bursts(7.5, 38, 78)))),
        ),
        duration=120 * minute,
    )


#: Answers of the diurnal scenario's assistant traffic: long-form (256 to 1024 tokens).
LONG = (256, 1024)


def diurnal() -> Scenario:
    return Scenario(
        name="diurnal",
        description="24 h of long-form answers following a daily cycle per topic (peaks at "
        "11:00, 15:00 and 20:00, night-time trough at a tenth of the peak)",
        spec=fleet_spec(),
        topics=(
            _topic("math", MATH, Diurnal(0.4, 4.0, peak_at=11 * 3600.0), LONG),
            _topic("code", CODE, Diurnal(0.5, 5.0, peak_at=15 * 3600.0), LONG),
            _topic("general", GENERAL, Diurnal(0.4, 4.0, peak_at=20 * 3600.0), LONG),
        ),
        duration=24 * 3600.0,
    )


def hot_topic() -> Scenario:
    hour = 3600.0
    return Scenario(
        name="hot-topic",
        description="a new topic grows to the busiest one within an hour, under a $30/h budget",
        spec=fleet_spec(budget="30.00"),
        topics=(
            _topic("math", MATH, Constant(2.0)),
            _topic("code", CODE, Constant(2.0)),
            _topic("general", GENERAL, Constant(4.0)),
            _topic("library", LIBRARY, Bursts(8.0, (1800.0,), 3600.0, 1800.0)),
        ),
        duration=3 * hour,
    )


def step() -> Scenario:
    minute = 60.0
    return Scenario(
        name="step",
        description="2 h of steady traffic; twice, math traffic jumps at once to 6x and "
        "decays back over 15 minutes",
        spec=fleet_spec(),
        topics=(
            _topic("math", MATH, Sum((Constant(3.0), Step(15.0, (20 * minute, 80 * minute),
                                                          15 * minute)))),
            _topic("code", CODE, Constant(4.0)),
            _topic("general", GENERAL, Constant(3.0)),
        ),
        duration=120 * minute,
    )  # fmt: skip


def spike() -> Scenario:
    minute = 60.0

    def spikes(rps: float) -> Bursts:
        return Bursts(rps, (30 * minute, 90 * minute), hold=180.0, ramp=1.0)

    return Scenario(
        name="spike",
        description="2 h of steady traffic; twice, every topic jumps at once to 4x for "
        "3 minutes and drops back",
        spec=fleet_spec(),
        topics=(
            _topic("math", MATH, Sum((Constant(3.0), spikes(9.0)))),
            _topic("code", CODE, Sum((Constant(4.0), spikes(12.0)))),
            _topic("general", GENERAL, Sum((Constant(3.0), spikes(9.0)))),
        ),
        duration=120 * minute,
    )


def flash_crowd() -> Scenario:
    minute = 60.0

    def spikes(rps: float) -> Bursts:
        return Bursts(rps, (75 * minute,), hold=180.0, ramp=1.0)

    return Scenario(
        name="flash-crowd",
        description="2 h of steady traffic; math jumps at once to 6x (decaying over 15 "
        "minutes), an hour later every topic jumps at once to 4x for 3 minutes",
        spec=fleet_spec(),
        topics=(
            _topic("math", MATH, Sum((Constant(3.0), Step(15.0, (15 * minute,), 15 * minute),
                                      spikes(9.0)))),
            _topic("code", CODE, Sum((Constant(4.0), spikes(12.0)))),
            _topic("general", GENERAL, Sum((Constant(3.0), spikes(9.0)))),
        ),
        duration=120 * minute,
    )  # fmt: skip


def hybrid() -> Scenario:
    minute = 60.0

    def bursts(rps: float, *starts: float) -> Bursts:
        return Bursts(rps, tuple(m * minute for m in starts), hold=240.0, ramp=240.0)

    return Scenario(
        name="hybrid",
        description="the bursty traffic with a frontier model served outside the fleet "
        "(per token, the savings reference) beside the fleet's own, under a $40/h budget",
        spec=fleet_spec(budget="40.00", frontier=True),
        topics=(
            _topic("math", MATH, Sum((Constant(3.0), bursts(7.5, 25, 65, 105))), frontier=True),
            _topic("code", CODE, Sum((Constant(4.0), bursts(10.0, 10, 50, 90))), frontier=True),
            _topic("general", GENERAL, Sum((Constant(3.0), bursts(7.5, 38, 78))), frontier=True),
        ),
        duration=120 * minute,
        # At 0.65 the router sends the frontier the queries where its lead is largest (about
        # a sixth of the traffic); at 0.7 and above nearly all of it.
        policy_alpha=0.65,
    )


#: Smooth traffic (ramps of minutes and hours) and sharp traffic (steps and spikes).
SCENARIOS = {
    "bursty": bursty,
    "diurnal": diurnal,
    "hot-topic": hot_topic,
    "step": step,
    "spike": spike,
}
SHARP = ("step", "spike", "flash-crowd")
#: Held out: run by ``--study`` beside the others, never tuned on.
HELD_OUT = {"flash-crowd": flash_crowd}
#: Every scenario ``shoal sim --scenario`` knows: the autoscaling study's, the held-out one,
#: and ``hybrid`` (a study of spend and savings, kept out of ``--study``'s autoscaling
#: targets).
ALL_SCENARIOS = {**SCENARIOS, **HELD_OUT, "hybrid": hybrid}
