"""Fitting and evaluating cascades on labelled data with recorded answers (RouterBench).

``shoal router fit`` calls :func:`fit_plan` to put a :class:`CascadePlan` into the artifact it
writes; ``shoal router eval`` calls :func:`cascade_report` for the ``cascade`` block of its
report. Both start from :func:`signals`: every model's recorded answer to every query turned
into what the confidence signals of :mod:`shoal.routing.cascade` read, with each query's
similarity to the router artifact's centroids and its nearest cluster.

Fitting, at one quality/cost weight ``lambda`` and for one signal, chooses per cluster the
chain (answering model, its voters, the model it escalates to, or a single model alone) and
the accept threshold that maximise ``accuracy - lambda * cost / reference cost`` on the train
split, every attempt paid, each cluster's choice shrunk toward the all-cluster one. The
verifier's train confidences are out-of-fold, so thresholds are not fitted on scores the
verifier has memorised. Evaluation sweeps ``lambda`` (the frontier), fitted on train,
replayed on test (:func:`shoal.routing.cascade.replay`). Pure apart from numpy.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from shoal.routing import cascade as cs
from shoal.routing import scoring
from shoal.routing.cascade_plan import ROUTED, CascadeChain, CascadePlan, ExAnte
from shoal.routing.evaluate import per_task_mean
from shoal.routing.fit import score_matrices, task_weights
from shoal.routing.types import Sample

F64 = npt.NDArray[np.float64]

#: The signals ``shoal router eval`` compares: name -> (base signal, voters, verifier).
#: ``structural`` reads the answer's shape alone; ``agreement`` compares the answering model
#: with one (``-3``, ``-4``: two, three) other cheap models; ``verifier`` is the logistic
#: scorer over the query's cluster similarities and the answer's shape and length
#: (FrugalGPT's scorer made small); ``verifier+agreement`` adds the agreement with one
#: (``-3``, ``-4``: two, three) voters to its features.
STRATEGIES: dict[str, tuple[str, int, bool]] = {
    "structural": ("structural", 0, False),
    "agreement": ("agreement", 1, False),
    "agreement-3": ("agreement", 2, False),
    "agreement-4": ("agreement", 3, False),
    "verifier": ("verifier", 0, True),
    "verifier+agreement": ("verifier", 1, True),
    "verifier+agreement-3": ("verifier", 2, True),
    "verifier+agreement-4": ("verifier", 3, True),
}
#: The quality/cost weights of the frontier sweep (accuracy points per reference cost).
COST_WEIGHTS: tuple[float, ...] = (
    0.0,
    *(round(float(x), 5) for x in np.geomspace(0.002, 100, 160)),
)
#: A model may answer first (or vote) when its mean cost is at most this share of the reference's.
CHEAP_SHARE = 0.25
#: The router alphas a cluster may be served at by the router's own per-query choice
#: (:data:`~shoal.routing.cascade_plan.ROUTED`): the grid of the router's alpha sweep.
ROUTED_ALPHAS: tuple[float, ...] = tuple(round(float(a), 3) for a in np.linspace(0.0, 1.0, 41))


@dataclass(frozen=True)
class RouterTables:
    """What the router ranks with: per-cluster quality and cost tables ``(k, m)``, its
    ``top_p`` and softmax temperature (an artifact's arrays and params, or a ``Router``'s)."""

    quality: npt.NDArray[Any]
    cost: npt.NDArray[Any]
    top_p: int
    temperature: float

    @classmethod
    def of_artifact(cls, header: dict[str, Any], arrays: dict[str, Any]) -> RouterTables:
        """The tables of a decoded artifact, with the router's defaults for missing params."""
        params = header.get("params", {})
        return cls(
            quality=arrays["quality"],
            cost=arrays["cost"],
            top_p=int(params.get("top_p", 3)),
            temperature=float(params.get("temperature", 0.1)),
        )

    def first_choices(
        self, similarity: npt.NDArray[Any], alphas: Sequence[float]
    ) -> npt.NDArray[np.int64]:
        """The router's first-ranked model ``(n, len(alphas))`` per query and alpha, computed
        as :meth:`~shoal.routing.router.Router.rank_embeddings` does (float32 similarities)."""
        q = np.asarray(self.quality, dtype=np.float32)
        c = np.asarray(self.cost, dtype=np.float32)
        q_n, c_n = scoring.minmax_rows(q), scoring.minmax_rows(c)
        mean_cost = c.mean(axis=0)
        span = float(mean_cost.max() - mean_cost.min()) or 1.0
        prior = q.mean(axis=0) - 1e-3 * (mean_cost - mean_cost.min()) / span
        idx, w = scoring.top_p_softmax(similarity, self.top_p, self.temperature)
        cols = [
            scoring.rank(scoring.blend(idx, w, scoring.cluster_scores(q_n, c_n, a)), prior)[:, 0]
            for a in alphas
        ]
        out = np.column_stack(cols) if cols else np.zeros((len(idx), 0))
        return out.astype(np.int64)

    def exante(self, similarity: npt.NDArray[Any]) -> F64:
        """The router's ex-ante quality estimate ``(n, m)`` of every model for every query:
        the quality table blended over the ``top_p`` nearest centroids, in float64 exactly as
        :meth:`~shoal.routing.cascade_plan.ExAnte.estimate` computes one query live."""
        sims = np.asarray(similarity, dtype=np.float64)
        p = max(1, min(self.top_p, sims.shape[1]))
        idx = np.argsort(-sims, axis=1, kind="stable")[:, :p]
        top = np.take_along_axis(sims, idx, axis=1)
        z = np.exp((top - top[:, :1]) / self.temperature)
        rows = np.asarray(self.quality, dtype=np.float64)[idx]  # (n, p, m)
        out: F64 = np.einsum("np,npm->nm", z, rows) / z.sum(axis=1, keepdims=True)
        return out

    def plan_exante(self, model: int) -> ExAnte:
        """The plan's form of the ex-ante estimate for one model (its quality column)."""
        column = np.asarray(self.quality, dtype=np.float64)[:, model]
        return ExAnte(tuple(float(q) for q in column), self.top_p, self.temperature)


@dataclass(frozen=True)
class Signals:
    """One split's recorded answers, turned into what the confidence signals read."""

    models: tuple[str, ...]
    tasks: list[str]
    quality: F64  # (n, m)
    cost: F64  # (n, m)
    similarity: F64  # (n, k): cosine to each artifact centroid
    cluster: npt.NDArray[np.int64]  # (n,) nearest centroid
    kinds: list[cs.AnswerKind]  # (n,) the answer kind of the query's cluster
    normalised: list[list[str | None]]  # (n, m)
    shape: F64  # (n, m): cs.structure
    log_length: F64  # (n, m)
    #: (n, A): the router's first choice per query at each of ``alphas`` (A = 0 without it).
    routed: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros((0, 0), np.int64))
    alphas: tuple[float, ...] = ()
    #: The router's tables (None: no routed options, no ex-ante feature).
    router: RouterTables | None = None
    #: (n, m): the router's ex-ante quality estimate per query and model (None without router).
    exante: F64 | None = None
    _pairs: dict[tuple[int, int], F64] = field(default_factory=dict, repr=False, compare=False)

    @property
    def n(self) -> int:
        """Number of queries."""
        return len(self.tasks)

    def options(self) -> tuple[F64, F64, npt.NDArray[np.int64]]:
        """Every way to serve a query by one model: each model, then the router's choice at
        each alpha. Quality and cost ``(n, m + A)`` and the model of each option ``(n, m + A)``."""
        m = len(self.models)
        model = np.broadcast_to(np.arange(m), (self.n, m))
        if self.alphas:
            model = np.hstack([model, self.routed])
        rows = np.arange(self.n)[:, None]
        return self.quality[rows, model], self.cost[rows, model], np.asarray(model, np.int64)

    def agreement(self, answer: int, voters: Sequence[int]) -> F64:
        """Mean similarity of ``answer``'s normalised answers to each voter's, per query."""
        if not voters:
            return np.zeros(self.n)
        out: F64 = np.mean([self._pair(answer, v) for v in voters], axis=0)
        return out

    def _pair(self, a: int, b: int) -> F64:
        key = (min(a, b), max(a, b))
        got = self._pairs.get(key)
        if got is None:
            got = np.array(
                [
                    cs.similarity(row[a], row[b], kind)
                    for row, kind in zip(self.normalised, self.kinds, strict=True)
                ]
            )
            self._pairs[key] = got
        return got

    def features(self, answer: int, voters: Sequence[int]) -> F64:
        """The verifier's features (:data:`~shoal.routing.cascade_plan.VERIFIER_FEATURES`)."""
        cols = [self.shape[:, answer], self.log_length[:, answer]]
        cols += [self._pair(answer, v) for v in voters]
        if self.exante is not None:
            cols.append(self.exante[:, answer])
        return np.column_stack([self.similarity, *cols])


def cluster_kinds(tasks: Sequence[str], cluster: npt.NDArray[Any], k: int) -> list[cs.AnswerKind]:
    """Each cluster's answer kind: the most common kind of its queries' tasks (``text``
    for an empty cluster)."""
    out: list[cs.AnswerKind] = []
    for c in range(k):
        kinds = Counter(
            cs.answer_kind(t) for t, lab in zip(tasks, cluster, strict=True) if lab == c
        )
        out.append(kinds.most_common(1)[0][0] if kinds else "text")
    return out


def signals(
    samples: Sequence[Sample],
    models: Sequence[str],
    vectors: npt.NDArray[Any],
    centroids: npt.NDArray[Any],
    *,
    kinds: Sequence[cs.AnswerKind] | None = None,
    router: RouterTables | None = None,
    alphas: Sequence[float] = ROUTED_ALPHAS,
) -> Signals:
    """Signals of labelled samples with recorded answers, for the artifact's centroids.

    ``kinds`` gives each cluster's answer kind (from train; default: from these samples'
    tasks). With ``router``, the router's first choice per query at each of ``alphas`` is
    kept too (routed options). Raises ``ValueError`` when a sample has no recorded answer for
    a model.
    """
    for s in samples:
        if set(s.answers) != set(models):
            missing = sorted(set(models) - set(s.answers))
            raise ValueError(
                f"{s.origin or 'a sample'}: no recorded answer for {missing}; a cascade is "
                "replayed from every model's answer (RouterBench's <model>|model_response)"
            )
    quality, cost = score_matrices(samples, models)
    tasks = [s.task or "default" for s in samples]
    sims = np.asarray(vectors, dtype=np.float64) @ np.asarray(centroids, dtype=np.float64).T
    cluster = np.argmax(sims, axis=1).astype(np.int64)
    k = sims.shape[1]
    per_cluster = list(kinds) if kinds is not None else cluster_kinds(tasks, cluster, k)
    query_kinds = [per_cluster[c] for c in cluster.tolist()]
    normalised = [
        [cs.normalise_answer(s.answers[m], kind) for m in models]
        for s, kind in zip(samples, query_kinds, strict=True)
    ]
    shape = np.array(
        [
            [cs.structure(s.answers[m], kind) for m in models]
            for s, kind in zip(samples, query_kinds, strict=True)
        ]
    )
    log_length = np.array([[math.log1p(len(s.answers[m])) for m in models] for s in samples])
    if router is not None:
        sims32 = np.asarray(vectors, np.float32) @ np.asarray(centroids, np.float32).T
        routed = router.first_choices(sims32, alphas)
    else:
        routed, alphas = np.zeros((len(samples), 0), np.int64), ()
    return Signals(
        models=tuple(models),
        tasks=tasks,
        quality=quality.astype(np.float64),
        cost=cost.astype(np.float64),
        similarity=sims,
        cluster=cluster,
        kinds=query_kinds,
        normalised=normalised,
        shape=shape.reshape(len(samples), len(models)),
        log_length=log_length.reshape(len(samples), len(models)),
        routed=routed,
        alphas=tuple(float(a) for a in alphas),
        router=router,
        exante=router.exante(sims) if router is not None else None,
    )


# -- candidate chains and their confidences ------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A chain to try: indices of the answering model, its voters and its escalation."""

    answer: int
    voters: tuple[int, ...]
    escalate: int


@dataclass
class Fitted:
    """A signal's candidates with train and test confidences (verifiers fitted on train)."""

    signal: str
    candidates: list[Candidate]
    train: list[F64]
    test: list[F64]
    verifiers: list[cs.Logistic | None]
    #: What :func:`choose` precomputes per split and cost cap (independent of the weight).
    cache: dict[tuple[int, float], Any] = field(default_factory=dict, repr=False)


def cheap_models(train: Signals, reference: int, share: float = CHEAP_SHARE) -> list[int]:
    """Models whose mean train cost is at most ``share`` of the reference's."""
    mean = train.cost.mean(axis=0)
    limit = share * mean[reference]
    return [j for j in range(len(train.models)) if j != reference and mean[j] <= limit]


def targets(train: Signals, most: int = 2) -> list[int]:
    """The ``most`` models with the highest mean per-task train accuracy (escalation targets)."""
    acc = [
        float(np.mean(list(per_task_mean(train.quality[:, j], train.tasks).values())))
        for j in range(len(train.models))
    ]
    return sorted(range(len(acc)), key=lambda j: (-acc[j], train.cost[:, j].mean()))[:most]


def fit_signal(
    name: str,
    train: Signals,
    test: Signals | None,
    *,
    reference: int,
    seed: int = 0,
    max_chain: int = 4,
) -> Fitted:
    """Candidates of a strategy of :data:`STRATEGIES` with their confidences on both splits."""
    base, n_voters, verifier = STRATEGIES[name]
    cheap = cheap_models(train, reference)
    tops = targets(train)
    cands: list[Candidate] = []
    train_conf: list[F64] = []
    test_conf: list[F64] = []
    models: list[cs.Logistic | None] = []
    if 1 + n_voters + 1 > max_chain:
        return Fitted(name, [], [], [], [])
    for a in cheap:
        for voters in itertools.combinations([v for v in cheap if v != a], n_voters):
            if verifier:
                x = train.features(a, voters)
                y = train.quality[:, a]
                tr = cs.out_of_fold(x, y, seed=seed)
                fitted = cs.fit_logistic(x, y)
                te = fitted.score(test.features(a, voters)) if test is not None else np.zeros(0)
                model: cs.Logistic | None = fitted
            elif base == "agreement":
                tr = train.agreement(a, voters)
                te = test.agreement(a, voters) if test is not None else np.zeros(0)
                model = None
            else:
                tr = train.shape[:, a]
                te = test.shape[:, a] if test is not None else np.zeros(0)
                model = None
            for t in tops:
                if t != a and t not in voters:
                    cands.append(Candidate(a, tuple(voters), t))
                    train_conf.append(tr)
                    test_conf.append(te)
                    models.append(model)
    return Fitted(name, cands, train_conf, test_conf, models)


# -- choosing chains and thresholds at one cost weight --------------------------------------------


@dataclass(frozen=True)
class Choice:
    """Per cluster: the chosen candidate (None: a single option) and its threshold. A single
    option is an index of :meth:`Signals.options`: a model, or past the models the router's
    choice at ``alphas[i - m]``."""

    candidate: list[Candidate | None]
    single: list[int]
    threshold: F64
    default_threshold: float


def _weights(sig: Signals) -> F64:
    """Per-query weights so that the utility's accuracy term is the mean of per-task means."""
    w = task_weights(sig.tasks)
    out: F64 = w / w.mean()
    return out


def single_mask(util: F64, models: int, alpha_index: int | None) -> F64:
    """Which single options (:meth:`Signals.options`) a cluster may take: every model when
    there are no routed options; otherwise only the router's choice at one alpha, the one
    given or (``None``) the one with the best total train utility at this cost weight (0 for
    allowed, ``-inf`` for not). One alpha for all clusters: picking it per cluster on train
    overfits (measured on RouterBench: 6.4 points below routing on test at 5.7 % of
    GPT-4's cost)."""
    mask = np.zeros(util.shape[1])
    if util.shape[1] > models:
        best = int(np.argmax(util[:, models:].sum(axis=0))) if alpha_index is None else alpha_index
        mask[:] = -np.inf
        mask[models + best] = 0.0
    return mask


def choose(
    fitted: Fitted,
    train: Signals,
    cost_weight: float,
    *,
    reference: int,
    shrinkage: float = 8.0,
    max_cost: float = 2.0,
    alpha_index: int | None = None,
) -> Choice:
    """Per cluster, the chain and threshold (or single option) with the best shrunk utility.

    ``max_cost`` caps a chain's mean train cost with every call made, as a multiple of the
    reference model's; a chain over the cap is not considered. With routed options
    (``train.alphas``) a cluster that is not cascaded is served by the router's choice at
    ``train.alphas[alpha_index]`` (default: the alpha with the best train utility).
    """
    k = train.similarity.shape[1]
    ref = float(train.cost[:, reference].mean()) or 1.0
    lam = cost_weight / ref
    w = _weights(train)
    counts = np.bincount(train.cluster, minlength=k)
    # Single models: utility per cluster, shrunk toward the global mean curve.
    onehot = np.zeros((k, train.n))
    onehot[train.cluster, np.arange(train.n)] = 1.0
    opt_q, opt_c, _ = train.options()
    util_single = onehot @ (w[:, None] * opt_q - lam * opt_c)  # (k, m + A)
    shrunk_single = util_single + shrinkage * util_single.sum(axis=0) / max(1, train.n)
    shrunk_single += single_mask(util_single, len(train.models), alpha_index)
    single = [int(j) for j in shrunk_single.argmax(axis=1)]
    chosen: list[Candidate | None] = [None] * k
    thresholds = np.full(k, -np.inf)
    table = _table(fitted, train, w, ref * max_cost)
    if table is None:
        return Choice(chosen, single, thresholds, -math.inf)
    keep, cand, index, dq, cesc, base_q, full = table
    jn, c_max = cand.shape
    # cs.fit_thresholds for every candidate at once: accepting query i under threshold t
    # gains dq + lam * cesc over escalating it; histograms per (candidate, cluster, bucket).
    gain = np.bincount(index.ravel(), (dq + lam * cesc).ravel(), jn * k * (c_max + 1))
    accepted = np.cumsum(gain.reshape(jn, k, c_max + 1)[:, :, ::-1], axis=2)[:, :, ::-1]
    lab = (np.arange(jn)[:, None] * k + train.cluster[None, :]).ravel()
    base = np.bincount(lab, (base_q - lam * full).ravel(), jn * k).reshape(jn, k)
    curves = base[:, :, None] + accepted[:, :, 1:]  # (J, k, C)
    total = curves.sum(axis=1)  # (J, C)
    shrunk = curves + shrinkage * total[:, None, :] / max(1, train.n)
    best_t = np.argmax(shrunk, axis=2)  # (J, k): ties to the lower threshold
    best_u = np.take_along_axis(shrunk, best_t[:, :, None], axis=2)[:, :, 0]
    j_best = np.argmax(best_u, axis=0)  # (k,)
    for c in range(k):
        j = int(j_best[c])
        if counts[c] > 0 and best_u[j, c] > shrunk_single[c].max() + 1e-12:
            chosen[c] = fitted.candidates[int(keep[j])]
            thresholds[c] = cand[j, best_t[j, c]]
    j = int(np.argmax(best_u.sum(axis=1)))
    default = float(cand[j, int(np.argmax(total[j]))])
    return Choice(chosen, single, thresholds, default)


_TableArrays = tuple[npt.NDArray[np.int64], F64, npt.NDArray[np.int64], F64, F64, F64, F64]


def _table(fitted: Fitted, train: Signals, w: F64, cap: float) -> _TableArrays | None:
    """Per candidate under the cost cap: its padded candidate thresholds and, per query, the
    flat (candidate, cluster, bucket) index and the quality and cost terms of the utility.
    Cached on ``fitted`` (it does not depend on the cost weight)."""
    key = (id(train), cap)
    got = fitted.cache.get(key)
    if got is not None or key in fitted.cache:
        return got
    rows = np.arange(train.n)
    k = train.similarity.shape[1]
    keep, cands, firsts, fulls, qa, qe, ce = [], [], [], [], [], [], []
    for j, chain in enumerate(fitted.candidates):
        first = train.cost[:, chain.answer] + train.cost[:, list(chain.voters)].sum(axis=1)
        full = first + train.cost[:, chain.escalate]
        if full.mean() > cap:
            continue
        keep.append(j)
        cands.append(cs.candidate_thresholds(fitted.train[j]))
        firsts.append(first)
        fulls.append(full)
        qa.append(train.quality[rows, chain.answer])
        qe.append(train.quality[rows, chain.escalate])
        ce.append(train.cost[:, chain.escalate])
    if not keep:
        fitted.cache[key] = None
        return None
    c_max = max(c.size for c in cands)
    cand = np.full((len(keep), c_max), np.inf)
    index = np.zeros((len(keep), train.n), dtype=np.int64)
    for row, (j, c) in enumerate(zip(keep, cands, strict=True)):
        cand[row, : c.size] = c
        bucket = np.searchsorted(c, fitted.train[j], side="right")
        index[row] = (row * k + train.cluster) * (c_max + 1) + bucket
    q_a, q_e = np.array(qa), np.array(qe)
    out: _TableArrays = (
        np.array(keep, dtype=np.int64),
        cand,
        index,
        w[None, :] * (q_a - q_e),
        np.array(ce),
        w[None, :] * q_e,
        np.array(fulls),
    )
    fitted.cache[key] = out
    return out


def apply(choice: Choice, fitted: Fitted, sig: Signals, *, split: str = "test") -> cs.Outcome:
    """Replay the chosen chains on ``sig`` (confidences of ``split``: ``train`` or ``test``)."""
    n, m = sig.quality.shape
    answerer = np.zeros(n, dtype=np.int64)
    voters = np.zeros((n, m), dtype=bool)
    target = np.full(n, -1, dtype=np.int64)
    accept = np.ones(n, dtype=bool)
    index = {id(c): i for i, c in enumerate(fitted.candidates)}
    confs = fitted.test if split == "test" else fitted.train
    option_model = sig.options()[2]
    for c in range(len(choice.candidate)):
        rows = np.flatnonzero(sig.cluster == c)
        if rows.size == 0:
            continue
        cand = choice.candidate[c]
        if cand is None:
            answerer[rows] = option_model[rows, choice.single[c]]
            continue
        conf = confs[index[id(cand)]][rows]
        answerer[rows] = cand.answer
        voters[np.ix_(rows, np.array(cand.voters, dtype=np.int64))] = True
        target[rows] = cand.escalate
        accept[rows] = conf >= choice.threshold[c]
    return cs.replay(sig.quality, sig.cost, answerer, voters, target, accept)


def point(sig: Signals, outcome: cs.Outcome, reference_cost: float, **extra: Any) -> dict[str, Any]:
    """An operating point: accuracy (mean per task), cost, its fraction of the reference's."""
    per = per_task_mean(outcome.quality, sig.tasks)
    cost = float(outcome.cost.sum())
    return {
        **extra,
        "accuracy": float(np.mean(list(per.values()))),
        "per_task": per,
        "cost": cost,
        "cost_fraction": cost / reference_cost if reference_cost > 0 else None,
        "escalated": float(outcome.escalated.mean()),
        "calls_per_query": float(outcome.calls.mean()),
    }


# -- the plan --------------------------------------------------------------------------------


def plan_from(
    choice: Choice,
    fitted: Fitted,
    train: Signals,
    *,
    cost_weight: float,
    fitted_on: str,
) -> CascadePlan:
    """The :class:`CascadePlan` of a choice: per-cluster thresholds and chains (with the
    verifier's weights where the signal is the verifier)."""
    models = train.models
    k = train.similarity.shape[1]
    kinds = cluster_kinds(train.tasks, train.cluster, k)
    index = {id(c): i for i, c in enumerate(fitted.candidates)}
    chains: list[CascadeChain] = []
    for c in range(k):
        cand = choice.candidate[c]
        if cand is None:
            chains.append(single_chain(choice.single[c], train, kinds[c]))
            continue
        model = fitted.verifiers[index[id(cand)]]
        chains.append(
            CascadeChain(
                answer=models[cand.answer],
                voters=tuple(models[v] for v in cand.voters),
                escalate=models[cand.escalate],
                kind=kinds[c],
                weights=tuple(float(x) for x in model.weights) if model else (),
                bias=float(model.bias) if model else 0.0,
                exante=train.router.plan_exante(cand.answer) if model and train.router else None,
            )
        )
    thresholds = tuple(
        float(t) if choice.candidate[c] is not None else -math.inf
        for c, t in enumerate(choice.threshold)
    )
    signal = STRATEGIES[fitted.signal][0]
    return CascadePlan(
        signal="verifier" if signal == "structural" else signal,
        thresholds=thresholds,
        default_threshold=choice.default_threshold,
        max_chain=max(c.calls for c in chains),
        cost_weight=cost_weight,
        fitted_on=fitted_on,
        chains=tuple(chains),
    )


def single_chain(option: int, train: Signals, kind: str) -> CascadeChain:
    """The chain of a single option of :meth:`Signals.options`: one model alone, or the
    router's choice at an alpha (:data:`~shoal.routing.cascade_plan.ROUTED`)."""
    m = len(train.models)
    if option < m:
        return CascadeChain(answer=train.models[option], kind=kind)
    return CascadeChain(answer=ROUTED, kind=kind, alpha=train.alphas[option - m])


def fit_plan(
    train: Signals,
    *,
    signal: str,
    cost_weight: float,
    reference: str,
    max_chain: int = 4,
    max_cost: float = 2.0,
    fitted_on: str = "",
    seed: int = 0,
) -> CascadePlan:
    """Fit a cascade plan on one split for ``signal`` (a name of :data:`STRATEGIES` whose
    base is ``agreement`` or ``verifier``) at ``cost_weight``."""
    if signal not in STRATEGIES or STRATEGIES[signal][0] == "structural":
        known = ", ".join(s for s in STRATEGIES if STRATEGIES[s][0] != "structural")
        raise ValueError(f"cascade signal {signal!r} cannot be served; one of {known}")
    ref = _index(train.models, reference)
    fitted = fit_signal(signal, train, None, reference=ref, seed=seed, max_chain=max_chain)
    choice = choose(fitted, train, cost_weight, reference=ref, max_cost=max_cost)
    return plan_from(choice, fitted, train, cost_weight=cost_weight, fitted_on=fitted_on)


def _index(models: Sequence[str], name: str) -> int:
    if name not in models:
        raise ValueError(f"reference model {name!r} is not in the data; known: {', '.join(models)}")
    return list(models).index(name)


# -- the report ------------------------------------------------------------------------------


def routed_outcomes(sig: Signals) -> list[cs.Outcome]:
    """Per alpha of ``sig.alphas``: the plan whose every chain is the router's choice at it
    (:data:`~shoal.routing.cascade_plan.ROUTED`, never escalating), replayed."""
    none = np.full(sig.n, -1, dtype=np.int64)
    voters = np.zeros(sig.quality.shape, dtype=bool)
    accept = np.ones(sig.n, dtype=bool)
    return [
        cs.replay(sig.quality, sig.cost, sig.routed[:, i], voters, none, accept)
        for i in range(len(sig.alphas))
    ]


def routed_points(sig: Signals, reference_cost: float) -> list[dict[str, Any]]:
    """The plans whose every chain is the router's choice at one alpha
    (:data:`~shoal.routing.cascade_plan.ROUTED`, never escalating): single-shot routing as
    cascade plans, one point per alpha of ``sig.alphas`` (``cost_weight`` None)."""
    return [
        point(sig, outcome, reference_cost, cost_weight=None, alpha=a)
        for a, outcome in zip(sig.alphas, routed_outcomes(sig), strict=True)
    ]


def bootstrap_summary(
    outcomes: Sequence[cs.Outcome], sig: Signals, reference: int, *, resamples: int, seed: int = 0
) -> dict[str, Any]:
    """The spread of ``cost_fraction_at_99`` over ``resamples`` stratified bootstrap draws of
    ``sig``'s queries (:func:`~shoal.routing.cascade.bootstrap_cheapest`): its median, 5th
    and 95th percentiles (None past what any point reaches) and the share of draws in which
    some point reaches 99 %, and in which one does within 40 % of the reference's cost."""
    figures = cs.bootstrap_cheapest(
        np.column_stack([o.quality for o in outcomes]),
        np.column_stack([o.cost for o in outcomes]),
        sig.quality[:, reference],
        sig.cost[:, reference],
        sig.tasks,
        resamples=resamples,
        seed=seed,
    )

    def pct(p: float) -> float | None:
        v = float(np.percentile(figures, p))
        return v if math.isfinite(v) else None

    return {
        "resamples": resamples,
        "median": pct(50),
        "p5": pct(5),
        "p95": pct(95),
        "reached": float(np.isfinite(figures).mean()),
        "within_40_percent": float((figures <= 0.40).mean()),
    }


def summary(points: Sequence[dict[str, Any]], reference_accuracy: float) -> dict[str, Any]:
    """Frontier and the cheapest points reaching 99 % and 100 % of the reference's accuracy."""
    front = cs.frontier(points)
    at99 = cs.cheapest_at(points, 0.99 * reference_accuracy)
    at100 = cs.cheapest_at(points, reference_accuracy)
    return {
        "frontier": front,
        "cost_fraction_at_99": at99["cost_fraction"] if at99 else None,
        "cost_fraction_at_reference": at100["cost_fraction"] if at100 else None,
        "best_accuracy": max(p["accuracy"] for p in points) if points else None,
    }


def cascade_report(
    train: Signals,
    test: Signals,
    *,
    reference: str,
    routing: Sequence[dict[str, Any]] = (),
    strategies: Iterable[str] = tuple(STRATEGIES),
    cost_weights: Sequence[float] = COST_WEIGHTS,
    max_chain: int = 5,
    max_cost: float = 2.0,
    seed: int = 0,
    bootstrap: int = 0,
) -> dict[str, Any]:
    """The ``cascade`` block of ``shoal router eval --json`` (schema in docs/routing.md).

    Per strategy (every single model, single-shot ``routing`` from the router's alpha sweep
    points ``routing`` (dicts with ``alpha``, ``accuracy``, ``cost``), and a cascade per
    signal), its frontier on test (accuracy against cost as a fraction of the reference's)
    and ``cost_fraction_at_99`` / ``cost_fraction_at_reference``: the cheapest point of the
    train-fitted sweep reaching 99 % / 100 % of the reference's test accuracy. For cascades,
    ``chosen_on_train`` adds the operating point a train-only choice would take: the cheapest
    cost weight whose *train* accuracy reaches 99 % (100 %) of the reference's train accuracy.
    With ``bootstrap`` > 0, ``bootstrap_at_99`` adds the spread of ``cost_fraction_at_99``
    over that many stratified resamples of the test queries (:func:`bootstrap_summary`).
    """
    ref = _index(train.models, reference)
    ref_cost = float(test.cost[:, ref].sum())
    ref_acc = float(np.mean(list(per_task_mean(test.quality[:, ref], test.tasks).values())))
    ref_train_cost = float(train.cost[:, ref].sum())
    ref_train_acc = float(np.mean(list(per_task_mean(train.quality[:, ref], train.tasks).values())))
    out: dict[str, Any] = {
        "reference": reference,
        "reference_accuracy": ref_acc,
        "reference_cost": ref_cost,
        "cost_weights": list(cost_weights),
        "strategies": {},
    }
    strat: dict[str, Any] = out["strategies"]
    for j, model in enumerate(test.models):
        acc = float(np.mean(list(per_task_mean(test.quality[:, j], test.tasks).values())))
        cost = float(test.cost[:, j].sum())
        p = {"accuracy": acc, "cost": cost, "cost_fraction": cost / ref_cost}
        strat[f"single:{model}"] = {"kind": "single", **summary([p], ref_acc)}
    if routing:
        pts = [
            {
                "alpha": r["alpha"],
                "accuracy": r["accuracy"],
                "cost": r["cost"],
                "cost_fraction": r["cost"] / ref_cost,
            }
            for r in routing
        ]
        strat["routing"] = {"kind": "routing", **summary(pts, ref_acc)}
    for name in strategies:
        fitted = fit_signal(name, train, test, reference=ref, seed=seed, max_chain=max_chain)
        points = []
        train_points = []
        outcomes = []
        for lam in cost_weights:
            choice = choose(fitted, train, lam, reference=ref, max_cost=max_cost)
            outcomes.append(apply(choice, fitted, test))
            points.append(point(test, outcomes[-1], ref_cost, cost_weight=lam))
            tp = point(train, apply(choice, fitted, train, split="train"), ref_train_cost)
            train_points.append((lam, tp))
        points += routed_points(test, ref_cost)
        outcomes += routed_outcomes(test)
        entry: dict[str, Any] = {"kind": "cascade", **summary(points, ref_acc), "points": points}
        if bootstrap > 0:
            entry["bootstrap_at_99"] = bootstrap_summary(
                outcomes, test, ref, resamples=bootstrap, seed=seed
            )
        chosen: dict[str, Any] = {}
        for label, share in (("at_99", 0.99), ("at_reference", 1.0)):
            goal = share * ref_train_acc - 1e-12
            ok = [w for w, tp in train_points if tp["accuracy"] >= goal]
            # Larger weights are cheaper: the largest weight that still reaches the goal on train.
            pick = max(ok) if ok else None
            hit = next((p for p in points if p["cost_weight"] == pick), None)
            chosen[label] = None if hit is None else {
                "cost_weight": pick, "accuracy": hit["accuracy"],
                "cost_fraction": hit["cost_fraction"], "escalated": hit["escalated"],
            }  # fmt: skip
        entry["chosen_on_train"] = chosen
        strat[f"cascade:{name}"] = entry
    if "routing" in strat:
        route = strat["routing"]["frontier"]
        for entry in strat.values():
            if entry["kind"] == "cascade":
                gaps = [
                    (cs.best_within(entry["points"], p["cost"]) or 0.0) - p["accuracy"]
                    for p in route
                ]
                entry["worst_gap_to_routing"] = min(gaps) if gaps else None
                # A cascade whose every threshold says "never escalate" is single-shot routing,
                # so a policy can always take routing's operating points instead.
                entry["frontier_with_routing"] = cs.frontier([*entry["points"], *route])
    return out


# -- entry points of ``shoal router fit`` / ``eval`` ---------------------------------------------


def best_model(sig: Signals) -> str:
    """The most accurate model (mean per task) of a split, the cheaper on ties."""
    acc = [
        float(np.mean(list(per_task_mean(sig.quality[:, j], sig.tasks).values())))
        for j in range(len(sig.models))
    ]
    j = min(range(len(acc)), key=lambda j: (-round(acc[j], 12), sig.cost[:, j].sum()))
    return sig.models[j]


def with_cascade(artifact: bytes, plan: CascadePlan) -> bytes:
    """The artifact with ``plan`` in its header under ``"cascade"`` (arrays unchanged)."""
    from shoal.routing.artifact import decode_artifact, encode_artifact
    from shoal.routing.cascade_plan import HEADER_KEY

    header, arrays = decode_artifact(artifact)
    plan.check_clusters(int(header["clusters"]))
    header = {k: v for k, v in header.items() if k not in ("arrays", "payload_sha256")}
    header[HEADER_KEY] = plan.to_header()
    return encode_artifact(header, arrays)


def fit_artifact_plan(
    artifact: bytes,
    samples: Sequence[Sample],
    vectors: npt.NDArray[Any],
    *,
    signal: str,
    cost_weight: float,
    reference: str | None = None,
    max_chain: int = 4,
    max_cost: float = 2.0,
    fitted_on: str = "",
) -> tuple[bytes, CascadePlan]:
    """Fit a cascade plan for a fitted artifact on its calibration samples (with recorded
    answers) and return the artifact with the plan in its header, and the plan."""
    from shoal.routing.artifact import decode_artifact

    header, arrays = decode_artifact(artifact)
    models = [str(m) for m in header["models"]]
    tables = RouterTables.of_artifact(header, arrays)
    train = signals(samples, models, vectors, arrays["centroids"], router=tables)
    plan = fit_plan(
        train,
        signal=signal,
        cost_weight=cost_weight,
        reference=reference or best_model(train),
        max_chain=max_chain,
        max_cost=max_cost,
        fitted_on=fitted_on,
    )
    return with_cascade(artifact, plan), plan


def evaluate_cascades(
    router: Any,
    train: Sequence[Sample],
    train_vectors: npt.NDArray[Any],
    test: Sequence[Sample],
    test_vectors: npt.NDArray[Any],
    *,
    reference: str | None,
    routing: Sequence[dict[str, Any]],
    strategies: Iterable[str] = tuple(STRATEGIES),
    bootstrap: int = 0,
) -> dict[str, Any]:
    """:func:`cascade_report` for a :class:`~shoal.routing.router.Router` (its centroids and
    models), fitted on ``train`` and evaluated on ``test``; ``reference`` defaults to the most
    accurate model on train."""
    models = list(router.models)
    tables = RouterTables(router.quality, router.cost, router.top_p, router.temperature)
    tr = signals(train, models, train_vectors, router.centroids, router=tables)
    kinds = cluster_kinds(tr.tasks, tr.cluster, router.centroids.shape[0])
    te = signals(test, models, test_vectors, router.centroids, kinds=kinds, router=tables)
    return cascade_report(
        tr,
        te,
        reference=reference or best_model(tr),
        routing=routing,
        strategies=strategies,
        bootstrap=bootstrap,
    )
