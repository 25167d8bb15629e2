"""Savings of a router against a reference model, on labelled data with real costs.

``shoal router eval --reference MODEL`` adds to its report what the router's choices cost
against sending every query to ``MODEL`` (e.g. GPT-4 on RouterBench): at the evaluated alpha
and at each point of the quality/cost frontier. The arithmetic is
:class:`shoal.contract.cost.Savings`, the very one the fleet's status, ``shoal usage`` and its
metrics use, so the figure in docs/routing.md and the one a fleet reports mean the same.
Pure; called by :mod:`shoal.routing.cli`.
"""

from __future__ import annotations

from typing import Any

from shoal.contract.cost import Savings


def _point(savings: Savings) -> dict[str, Any]:
    return {
        "spend": savings.spend_usd,
        "reference_cost": savings.reference_usd,
        "ratio": savings.ratio,
        "saved_percent": savings.saved_percent,
    }


def savings_report(report: dict[str, Any], reference: str) -> dict[str, Any]:
    """The ``savings`` block for an evaluation report (``reference``: a model it scores)."""
    single = report["baselines"]["single"]
    if reference not in single:
        known = ", ".join(sorted(single))
        raise ValueError(f"reference model {reference!r} is not in the data; known: {known}")
    ref = single[reference]
    router = report["router"]
    frontier = [
        {"alpha": p["alpha"], "accuracy": p["accuracy"], **_point(Savings(p["cost"], ref["cost"]))}
        for p in report["frontier"]
    ]
    reaching = [p for p in frontier if p["accuracy"] >= ref["accuracy"]]
    cheapest = min(reaching, key=lambda p: p["spend"]) if reaching else None
    return {
        "reference": reference,
        "reference_accuracy": ref["accuracy"],
        "reference_cost": ref["cost"],
        "router": {
            "alpha": router["alpha"],
            "accuracy": router["accuracy"],
            **_point(Savings(router["cost"], ref["cost"])),
        },
        "frontier": frontier,
        "reaches_reference": cheapest,
    }
