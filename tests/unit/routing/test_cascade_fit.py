"""Fitting cascades and replaying them, on synthetic data with recorded answers.

Three models: ``small`` and ``voter`` are cheap, ``big`` is always right and twenty times as
expensive. On multiple-choice questions ``small`` is right four times in five and, when it
is wrong, ``voter`` (right where ``small`` is wrong) disagrees with it; on coding questions
``small`` answers in JavaScript when it is wrong. So agreement catches the first kind of
mistake, the structural check the second, and a cascade reaches ``big``'s accuracy for a
fraction of its cost, where routing one model per query cannot.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from shoal.cli import app
from shoal.routing import Sample
from shoal.routing import cascade_fit as cf
from shoal.routing.artifact import decode_artifact
from shoal.routing.cascade_plan import CascadePlan

PY = "```python\ndef f(x):\n    return x + {i}\n```"
JS = "```\nfunction f(x) {{ return x + {i}; }}\n```"
COST = {"small": 0.001, "voter": 0.001, "big": 0.02}


def cascade_samples(n: int = 120, seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        wrong = bool(rng.random() < 0.2)
        if i % 2 == 0:
            right, other = "ABCD"[i % 4], "ABCD"[(i + 1) % 4]
            prompt = f"Pick the option: which letter question number {i} multiple choice"
            answers = {"small": other if wrong else right, "voter": right, "big": right}
            scores = {"small": 0.0 if wrong else 1.0, "voter": 1.0, "big": 1.0}
            if not wrong and rng.random() < 0.3:  # the voter is no oracle
                answers["voter"], scores["voter"] = other, 0.0
            task = "arc"
        else:
            prompt = f"Write a python function number {i} that adds to its argument code"
            answers = {
                "small": (JS if wrong else PY).format(i=i),
                "voter": JS.format(i=i),
                "big": PY.format(i=i),
            }
            scores = {"small": 0.0 if wrong else 1.0, "voter": 0.0, "big": 1.0}
            task = "mbpp"
        out.append(
            Sample(prompt, scores, task=task, costs=dict(COST), origin=f"syn:{i}", answers=answers)
        )
    return out


def embed(samples: list[Sample]) -> np.ndarray:
    """Two well-separated directions, one per task (a stand-in for an embedder)."""
    x = np.array([[1.0, 0.05] if s.task == "arc" else [0.05, 1.0] for s in samples])
    return x / np.linalg.norm(x, axis=1, keepdims=True)


CENTROIDS = np.array([[1.0, 0.0], [0.0, 1.0]])
MODELS = ("small", "voter", "big")


def test_signals_read_the_recorded_answers() -> None:
    samples = cascade_samples()
    sig = cf.signals(samples, MODELS, embed(samples), CENTROIDS)
    assert sig.kinds[0] == "choice" and sig.kinds[1] == "code"
    assert cf.cluster_kinds(sig.tasks, sig.cluster, 2) == ["choice", "code"]
    small = MODELS.index("small")
    code = np.array([k == "code" for k in sig.kinds])
    assert np.array_equal(sig.shape[code, small] == 1.0, sig.quality[code, small] == 1.0)
    with pytest.raises(ValueError, match="no recorded answer"):
        cf.signals([Sample("q", {"small": 1.0}, task="arc")], ["small"], np.ones((1, 2)), CENTROIDS)


@pytest.mark.parametrize("signal", ["agreement", "verifier", "verifier+agreement"])
def test_a_fitted_plan_escalates_the_cheap_models_doubtful_answers(signal: str) -> None:
    train = cascade_samples(seed=1)
    sig = cf.signals(train, MODELS, embed(train), CENTROIDS)
    plan = cf.fit_plan(sig, signal=signal, cost_weight=0.05, reference="big", fitted_on="syn")
    assert plan.signal == signal.split("+")[0]
    assert len(plan.chains) == 2 and plan.fitted_on == "syn"
    mc, code = plan.chains
    assert mc.kind == "choice" and code.kind == "code"
    # Agreement sees small's multiple-choice mistakes (the voter disagrees), the verifier's
    # structure feature its JavaScript; where a signal sees nothing, the cluster goes straight
    # to the big model (a chain of one, always accepted).
    sees = {
        "agreement": (True, False),
        "verifier": (False, True),
        "verifier+agreement": (True, True),
    }[signal]
    for chain, threshold, seen in zip(plan.chains, plan.thresholds, sees, strict=True):
        if seen:
            assert (chain.answer, chain.escalate) == ("small", "big")
            assert math.isfinite(threshold)
        else:
            assert (chain.answer, chain.escalate) == ("big", None)
            assert threshold == -math.inf
    if signal.startswith("verifier"):
        assert len(code.weights) == 2 + 2 + len(code.voters)
    # The plan survives the artifact header.
    assert CascadePlan.from_header(json.loads(json.dumps({"cascade": plan.to_header()}))) == plan


def test_the_report_puts_cascades_beside_routing_and_single_models() -> None:
    train, test = cascade_samples(seed=1), cascade_samples(seed=2)
    tr = cf.signals(train, MODELS, embed(train), CENTROIDS)
    te = cf.signals(test, MODELS, embed(test), CENTROIDS, kinds=["choice", "code"])
    routing = [{"alpha": 1.0, "accuracy": 1.0, "cost": float(te.cost[:, 2].sum())}]
    report = cf.cascade_report(
        tr, te, reference="big", routing=routing, strategies=["structural", "agreement"],
        bootstrap=40,
    )  # fmt: skip
    strat = report["strategies"]
    spread = strat["cascade:agreement"]["bootstrap_at_99"]
    assert spread["resamples"] == 40 and 0.0 <= spread["reached"] <= 1.0
    assert spread["median"] is None or spread["p5"] <= spread["median"] <= (spread["p95"] or 9)
    assert report["reference_accuracy"] == 1.0
    assert set(strat) == {
        "single:small", "single:voter", "single:big", "routing",
        "cascade:structural", "cascade:agreement",
    }  # fmt: skip
    assert strat["single:big"]["cost_fraction_at_reference"] == 1.0
    assert strat["routing"]["cost_fraction_at_reference"] == 1.0
    # Agreement catches the multiple-choice mistakes but not the code ones, structure the
    # reverse: each alone reaches 99% of big's accuracy (at most one wrong answer in a hundred)
    # only where its kind is escalated too, so both cost more than a third of big's.
    for name in ("cascade:structural", "cascade:agreement"):
        entry = strat[name]
        assert entry["best_accuracy"] == 1.0
        assert entry["cost_fraction_at_reference"] <= 1.0
        assert entry["worst_gap_to_routing"] >= 0.0
        points = entry["points"]
        assert {p["cost_weight"] for p in points} == set(cf.COST_WEIGHTS)
        # Every attempt is paid: a point's cost is at least its calls' cheapest.
        assert all(p["cost"] >= len(test) * 0.001 - 1e-12 for p in points)
    cheap = min(strat["cascade:agreement"]["points"], key=lambda p: p["cost"])
    assert cheap["escalated"] == 0.0


def write_csv(path: Path, samples: list[Sample]) -> Path:
    import csv

    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        models = list(MODELS)
        w.writerow(
            ["prompt", "eval_name", *models, *(f"{m}|model_response" for m in models),
             *(f"{m}|total_cost" for m in models)]
        )  # fmt: skip
        for s in samples:
            w.writerow(
                [repr([s.prompt]), s.task, *(s.scores[m] for m in models),
                 *(repr([s.answers[m]]) for m in models), *(s.costs[m] for m in models)]
            )  # fmt: skip
    return path


def test_router_fit_writes_a_cascade_plan_and_eval_reports_cascades(tmp_path: Path) -> None:
    runner = CliRunner()
    train = write_csv(tmp_path / "syn_train.csv", cascade_samples(seed=1))
    test = write_csv(tmp_path / "syn_test.csv", cascade_samples(seed=2))
    out = tmp_path / "router.bin"
    res = runner.invoke(
        app,
        ["router", "fit", "--data", str(train), "--out", str(out), "--embedder", "hash-128",
         "--clusters", "2", "--top-p", "1", "--no-cache", "--cascade", "agreement",
         "--cascade-cost-weight", "0.05", "--cascade-reference", "big"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "cascade (agreement" in res.output
    header, _ = decode_artifact(out.read_bytes())
    plan = CascadePlan.from_header(header)
    assert plan is not None and plan.signal == "agreement" and len(plan.thresholds) == 2
    plan.check_clusters(header["clusters"])
    res = runner.invoke(
        app,
        ["router", "eval", "--artifact", str(out), "--data", str(test), "--json", "--no-cache",
         "--cascade-train", str(train), "--reference", "big", "--cascade-signals",
         "agreement,verifier", "--plot", str(tmp_path / "cascade.png")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout[res.stdout.index("{") :])
    block = report["cascade"]
    assert block["reference"] == "big"
    assert {"cascade:agreement", "cascade:verifier", "routing"} <= set(block["strategies"])
    assert (tmp_path / "cascade.png").read_bytes()[:4] == b"\x89PNG"
    res = runner.invoke(
        app,
        ["router", "eval", "--artifact", str(out), "--data", str(test), "--no-cache",
         "--cascade-train", str(train), "--cascade-signals", "vibes"],
    )  # fmt: skip
    assert res.exit_code != 0 and "unknown cascade signals" in res.output
    res = runner.invoke(
        app,
        ["router", "fit", "--data", str(train), "--out", str(tmp_path / "x.bin"), "--embedder",
         "hash-128", "--clusters", "2", "--no-cache", "--cascade", "structural"],
    )  # fmt: skip
    assert res.exit_code == 2 and "cannot be served" in res.output
    assert not (tmp_path / "x.bin").exists()


def test_uncascaded_clusters_are_served_by_the_routers_choice_and_routing_is_in_the_sweep() -> None:
    from shoal.routing.cascade_plan import ROUTED

    samples = cascade_samples()
    tables = cf.RouterTables(
        quality=np.array([[0.8, 0.7, 1.0], [0.8, 0.0, 1.0]]),
        cost=np.array([[0.001, 0.001, 0.02], [0.001, 0.001, 0.02]]),
        top_p=1,
        temperature=0.1,
    )
    sig = cf.signals(samples, MODELS, embed(samples), CENTROIDS, router=tables)
    assert sig.routed.shape == (len(samples), len(cf.ROUTED_ALPHAS))
    # At alpha 1 the router picks the best quality (big), at alpha 0 the cheapest (small).
    assert (sig.routed[:, -1] == MODELS.index("big")).all()
    assert (sig.routed[:, 0] == MODELS.index("small")).all()
    # A cost weight at which escalating never pays: every cluster is routed, at one alpha.
    plan = cf.fit_plan(sig, signal="agreement", cost_weight=100.0, reference="big")
    assert all(c.answer == ROUTED and c.escalate is None for c in plan.chains)
    assert len({c.alpha for c in plan.chains}) == 1
    # The report's sweep holds single-shot routing at every alpha as an all-routed plan.
    report = cf.cascade_report(sig, sig, reference="big", strategies=["agreement"])
    points = report["strategies"]["cascade:agreement"]["points"]
    routed = [p for p in points if p["cost_weight"] is None]
    assert [p["alpha"] for p in routed] == list(cf.ROUTED_ALPHAS)
    assert routed[-1]["accuracy"] == 1.0 and routed[-1]["cost_fraction"] == pytest.approx(1.0)
