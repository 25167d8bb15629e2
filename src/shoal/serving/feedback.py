"""Feedback from clients on the fleet's answers, attributed without shared state.

Every answer's ``id`` is a :class:`CompletionIds` id: it carries the model that answered and
the router's nearest cluster, with an HMAC over both under the fleet's feedback key, so any
ingress replica that holds the key can attribute ``POST /v1/feedback`` (``{"id": ..., "score":
0..1}``) to its model and cluster, and a forged or altered id is refused. Feedback is counted
per model and cluster in Prometheus (labels bounded by the fleet's models and the router's
clusters); no prompt or answer text is kept anywhere. The operator's refit reads those series.

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
from dataclasses import dataclass

from shoal.contract import FEEDBACK_KEY_ENV, FEEDBACK_KEY_FILE_ENV
from shoal.serving.openai_api import ApiError, load_json_object

log = logging.getLogger("shoal.serving.feedback")

_ID = re.compile(
    r"^(?P<prefix>(?:chatcmpl-|cmpl-)(?:p[0-9]{5}-)?)(?P<nonce>[0-9a-f]{16})"
    r"\.(?P<model>[a-z0-9-]{1,40})"
    r"\.(?P<cluster>[0-9]{1,6}|x)\.(?P<mac>[A-Za-z0-9_-]{22})$"
)


@dataclass(frozen=True)
class Attribution:
    """Who an answer came from, as its id says."""

    model: str
    cluster: int | None


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

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest()[:16])

    def issue(self, prefix: str, model: str, cluster: int | None) -> str:
        """A new id for an answer of ``model`` (the router's nearest ``cluster``, if any)."""
        body = f"{prefix}{secrets.token_hex(8)}.{model}.{'x' if cluster is None else cluster}"
        return f"{body}.{self._mac(body)}"

    def verify(self, completion_id: str) -> Attribution:
        """The model and cluster an id names; :class:`ApiError` 400 for a forged one."""
        match = _ID.match(completion_id)
        if match is not None:
            body, mac = completion_id.rsplit(".", 1)
            if hmac.compare_digest(mac, self._mac(body)):
                cluster = match["cluster"]
                return Attribution(match["model"], None if cluster == "x" else int(cluster))
        raise ApiError(
            400,
            "This id was not issued by this fleet (or was altered); send the id of one of "
            "its answers.",
            param="id",
            code="invalid_completion_id",
        )


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
