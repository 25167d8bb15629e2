"""The check of a vllm model's ``engineArgs`` keys against the pinned vLLM's engine arguments.

Ray Serve LLM passes ``engine_kwargs`` to vLLM's ``AsyncEngineArgs`` and refuses an unknown
key, but only inside the cluster, where a misspelt argument becomes a failed deployment.
Here the same check runs when the fleet is validated: by :class:`ModelSpec`'s Pydantic
validator, so ``shoal render``, ``shoal up`` and the operator refuse the fleet with the key
named (the operator as an ``InvalidSpec`` Ready condition and Warning event, before it
renders anything).

Why not CEL in the CRD, like the other rules: ``engineArgs`` is an untyped object
(``x-kubernetes-preserve-unknown-fields``), and the API server shows CEL none of such an
object's unknown keys, so no rule can name them; typing it as a map would put a list of ~200
names, tied to one vLLM release, into every fleet's admission cost and into the CRD, which
would then change with every vLLM bump. The list is data of the operator's release instead:
:data:`~shoal.api.v1alpha1.vllm_engine_args.ENGINE_ARGS`, generated from vLLM itself by
``shoal engine-args`` (a test fails when it drifts from the installed vLLM).

Three keys are refused although vLLM knows them: the typed fields set them, checked against
the engine and the accelerator (:mod:`shoal.api.v1alpha1.variants`).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from shoal.api.v1alpha1.vllm_engine_args import ENGINE_ARGS, VLLM_VERSION

#: engineArgs keys that typed fields own: key -> the field to use instead.
TYPED_KEYS: dict[str, str] = {
    "quantization": "quantization.method",
    "kv_cache_dtype": "quantization.kvCacheDtype",
    "speculative_config": "speculative",
}


def unknown_engine_args(args: Mapping[str, Any]) -> str | None:
    """Why ``args`` are not a vllm model's engine arguments, or None when they are."""
    problems = []
    for key in sorted(args):
        if key in TYPED_KEYS:
            problems.append(f"engineArgs.{key} is set through the model's {TYPED_KEYS[key]}")
        elif key not in ENGINE_ARGS:
            near = difflib.get_close_matches(key, ENGINE_ARGS, n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            problems.append(
                f"engineArgs.{key} is not an engine argument of vLLM {VLLM_VERSION}{hint}"
            )
    return "; ".join(problems) or None
