"""Feedback from clients on the fleet's answers, attributed without shared state.

Every answer's ``id`` is a :class:`CompletionIds` id: it carries the model that answered and
the router's nearest cluster, with an HMAC over both under the fleet's feedback key, so any
ingress replica that holds the key can attribute ``POST /v1/feedback`` (``{"id": ..., "score":
0..1}``) to its model and cluster, and a forged or altered id is refused. Feedback is counted
per model and cluster in Prometheus (labels bounded by the fleet's models and the router's
clusters); no prompt or answer text is kept anywhere. The operator's refit reads those series.

An id is bound to the tenant that got the answer: the HMAC covers the tenant's name too (the
ingress names it for the request in :func:`bind_tenant`), so only that tenant's key can score
it (an open fleet's answers are bound to no tenant). Its nonce starts with the time it was
issued: :class:`FeedbackLedger` takes one score per id within :data:`FEEDBACK_WINDOW_SECONDS`
(a replay is a 409, an older id a 400) and at most :data:`FEEDBACK_RATE_PER_SECOND` scores a
second per tenant (429 past a burst of :data:`FEEDBACK_BURST`). The ledger is per ingress
replica: a replayed id can be counted at most once by each replica.

A routed answer's id also logs the routing decision for off-policy estimates (see
:func:`logged_prefix`): the *propensity* of the model that answered (the probability the
router's decision, exploration included, gave it) is part of the signed prefix, so a client
can neither forge nor alter it, and the *held-out share* (:data:`HELD_OUT_SHARE` of the
answers) is a hash of the id's nonce, so nothing is stored for either. The ingress counts
such feedback per split in the propensity-weighted sums an IPS estimate needs
(:meth:`~shoal.serving.metrics.RouterMetrics.logged_feedback`); the operator's refit learns
from the other share and adopts a refit only when the held-out share's estimate says it
routes better.

The key comes from the environment (:data:`~shoal.contract.FEEDBACK_KEY_ENV`), or from the
file :data:`~shoal.contract.FEEDBACK_KEY_FILE_ENV` names (in a cluster: the fleet's Secret,
mounted as a file); without one, a replica makes its own, and feedback is then accepted only
by the replica that answered (said in the log at start).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from collections import OrderedDict
from contextvars import ContextVar
from dataclasses import dataclass, field

from shoal.contract import FEEDBACK_KEY_ENV, FEEDBACK_KEY_FILE_ENV
from shoal.serving.openai_api import ApiError, load_json_object

log = logging.getLogger("shoal.serving.feedback")

_ID = re.compile(
    r"^(?P<prefix>(?:chatcmpl-|cmpl-)(?:p[0-9]{5}-)?)(?P<nonce>[0-9a-f]{16})"
    r"\.(?P<model>[a-z0-9-]{1,40})"
    r"\.(?P<cluster>[0-9]{1,6}|x)\.(?P<mac>[A-Za-z0-9_-]{22})$"
)


#: How long after an answer its feedback is taken (and its id remembered).
FEEDBACK_WINDOW_SECONDS = 24 * 3600.0
#: Scores a second each tenant may send to one ingress replica, and the burst above it.
FEEDBACK_RATE_PER_SECOND = 20.0
FEEDBACK_BURST = 200.0
#: Ids one replica remembers at most (the oldest are forgotten first; an id forgotten early
#: can be scored again on that replica only).
MAX_REMEMBERED_IDS = 500_000

#: The tenant the request being answered belongs to ("" in an open fleet); set by the ingress
#: for each request (:func:`bind_tenant`), read where its ids are issued.
_TENANT: ContextVar[str] = ContextVar("shoal_feedback_tenant", default="")


def bind_tenant(tenant: str) -> None:
    """Bind the ids issued for the current request (this task's context) to ``tenant``."""
    _TENANT.set(tenant)


@dataclass(frozen=True)
class Attribution:
    """Who an answer came from, as its id says."""

    model: str
    cluster: int | None
    #: Unix time the id was issued.
    issued_at: float = 0.0


def _key_file(path: str) -> bytes | None:
    """The key in the file ``path`` names (surrounding whitespace dropped); None when there is
    no such file (the Secret is optional) or it is empty."""
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            key = f.read().strip()
    except OSError:
        return None
    return key or None


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


class CompletionIds:
    """Issues and verifies signed completion ids (see the module docstring)."""

    def __init__(self, key: bytes | None = None) -> None:
        if key is None:
            env = os.environ.get(FEEDBACK_KEY_ENV, "")
            key = env.encode() if env else _key_file(os.environ.get(FEEDBACK_KEY_FILE_ENV, ""))
        self.shared = key is not None
        if key is None:
            log.warning(
                "%s is not set: feedback is accepted only by the replica that answered",
                FEEDBACK_KEY_ENV,
            )
            key = secrets.token_bytes(32)
        self._key = key

    def _mac(self, body: str, tenant: str) -> str:
        signed = f"{body}\n{tenant}".encode()
        return _b64(hmac.new(self._key, signed, hashlib.sha256).digest()[:16])

    def issue(self, prefix: str, model: str, cluster: int | None, tenant: str | None = None) -> str:
        """A new id for an answer of ``model`` (the router's nearest ``cluster``, if any),
        bound to ``tenant`` (None: the one :func:`bind_tenant` named for this request)."""
        tenant = _TENANT.get() if tenant is None else tenant
        nonce = f"{int(time.time()) & 0xFFFFFFFF:08x}{secrets.token_hex(4)}"
        body = f"{prefix}{nonce}.{model}.{'x' if cluster is None else cluster}"
        return f"{body}.{self._mac(body, tenant)}"

    def verify(self, completion_id: str, tenant: str = "") -> Attribution:
        """The model and cluster an id of ``tenant``'s names; :class:`ApiError` 400 for a
        forged one or one issued to another tenant."""
        match = _ID.match(completion_id)
        if match is not None:
            body, mac = completion_id.rsplit(".", 1)
            if hmac.compare_digest(mac, self._mac(body, tenant)):
                cluster = match["cluster"]
                return Attribution(
                    match["model"],
                    None if cluster == "x" else int(cluster),
                    float(int(match["nonce"][:8], 16)),
                )
        raise ApiError(
            400,
            "This id was not issued by this fleet to you (or was altered); send the id of "
            "one of the answers you got.",
            param="id",
            code="invalid_completion_id",
        )


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass
class FeedbackLedger:
    """One score per answer id, and a rate per tenant, on one ingress replica."""

    window: float = FEEDBACK_WINDOW_SECONDS
    rate: float = FEEDBACK_RATE_PER_SECOND
    burst: float = FEEDBACK_BURST
    capacity: int = MAX_REMEMBERED_IDS
    _seen: OrderedDict[str, float] = field(default_factory=OrderedDict)
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def admit(self, completion_id: str, who: Attribution, tenant: str, now: float) -> None:
        """Take one score for ``completion_id`` (already verified as ``who``) from
        ``tenant``; :class:`ApiError` 429 past the tenant's rate, 400 for an id older than
        the window, 409 for an id scored before."""
        bucket = self._buckets.setdefault(tenant, _Bucket(self.burst, now))
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        if bucket.tokens < 1:
            raise ApiError(
                429,
                f"Too much feedback: at most {self.rate:g} scores a second.",
                type="rate_limit_exceeded",
                code="feedback_rate_limited",
            )
        bucket.tokens -= 1  # every attempt counts, replays too
        if now - who.issued_at > self.window:
            raise ApiError(
                400,
                f"This answer is older than {self.window / 3600:g} h; feedback on it is "
                "no longer taken.",
                param="id",
                code="feedback_window_passed",
            )
        while self._seen and (
            len(self._seen) >= self.capacity or next(iter(self._seen.values())) < now - self.window
        ):
            self._seen.popitem(last=False)
        if completion_id in self._seen:
            raise ApiError(
                409,
                "This answer has been scored already; one score per answer.",
                param="id",
                code="feedback_already_given",
            )
        self._seen[completion_id] = who.issued_at


def parse_feedback(body: bytes) -> tuple[str, float]:
    """``(id, score)`` from a feedback body; 400 naming the field when it is not valid."""
    data = load_json_object(body)
    cid, score = data.get("id"), data.get("score")
    if not isinstance(cid, str) or not cid:
        raise ApiError(400, "id must be the id of an answer of this fleet.", param="id")
    if isinstance(score, bool) or not isinstance(score, int | float) or not 0 <= score <= 1:
        raise ApiError(400, "score must be a number within [0, 1].", param="score")
    return cid, float(score)


#: Share of the logged answers whose feedback is held out from refits, to judge them.
HELD_OUT_SHARE = 0.3
#: Propensities are logged in units of 1/PROPENSITY_SCALE (five digits in the id).
PROPENSITY_SCALE = 10_000
_LOGGED = re.compile(r"^(?:chatcmpl-|cmpl-)p(?P<p>[0-9]{5})-(?P<nonce>[0-9a-f]{16})\.")


def logged_prefix(prefix: str, propensity: float | None) -> str:
    """The id prefix of an answer whose routing decision is logged with ``propensity``
    (None: not a logged decision, e.g. a fallback model the decision did not pick). The
    prefix is signed with the rest of the id."""
    if propensity is None or not propensity > 0:
        return prefix
    units = max(1, min(PROPENSITY_SCALE, round(propensity * PROPENSITY_SCALE)))
    return f"{prefix}p{units:05d}-"


def decision_propensity(headers: dict[str, str], cluster: int | None, attempt: int) -> float | None:
    """The logged propensity of the model a routed request's ``attempt``-th candidate answers
    with: the router's decision (``x-shoal-propensity``, 1 without exploration) for the first
    candidate of a routed request; None for a fallback (not what the decision picked) and for
    a request that named its model (no cluster)."""
    if cluster is None or attempt != 0:
        return None
    try:
        return float(headers.get("x-shoal-propensity", "1"))
    except ValueError:
        return None


def held_out(nonce: str) -> bool:
    """Whether the answer with this id nonce is in the held-out share (deterministic)."""
    digest = hashlib.sha256(f"shoal-held-out:{nonce}".encode()).digest()
    return int.from_bytes(digest[:4], "big") < HELD_OUT_SHARE * 2**32


def logged_decision(completion_id: str) -> tuple[float, bool] | None:
    """``(propensity, held_out)`` of a *verified* id that logs its routing decision; None for
    one that does not (an unrouted answer, a fallback, an id from before logging)."""
    match = _LOGGED.match(completion_id)
    if match is None:
        return None
    return int(match["p"]) / PROPENSITY_SCALE, held_out(match["nonce"])
