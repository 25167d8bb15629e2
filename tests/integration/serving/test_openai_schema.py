"""OpenAI's own API description against the fleet endpoint, property-based (schemathesis).

Requests are generated from ``POST /chat/completions``, ``POST /completions`` and
``GET /models`` of OpenAI's published description (``../shared/data/openai/openapi.yaml``,
MIT, read in place and never copied here) and sent to a real fleet: Ray Serve, a llama.cpp
tiny model that writes its own OpenAI bytes and a simulated one whose text the ingress
formats. Two properties, over a bounded number of examples: no answer is a server error
(5xx), and every answer whose status the description documents fits its response schema.
Most generated models are unknown names (404); a share is rewritten to ``auto`` and to each
model's name so that the routing and both engines' answers are exercised.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.contract import BuildArgs
from shoal.devtools.testing import REPO_ROOT, require

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SPEC = REPO_ROOT.parent / "shared" / "data" / "openai" / "openapi.yaml"
#: Examples per operation: enough to find shape bugs, bounded for CI's time.
EXAMPLES = {"/chat/completions": 150, "/completions": 100, "/models": 10}
MODELS = ["auto", "tiny", "sim"]


@pytest.fixture(scope="module")
def schema() -> Any:
    require(SPEC.is_file(), f"OpenAI's API description is not at {SPEC}")
    schemathesis = pytest.importorskip("schemathesis", reason="schemathesis (dev) not installed")
    import yaml

    raw = yaml.load(SPEC.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return schemathesis.openapi.from_dict(_without_implicit_discriminators(raw))


def _without_implicit_discriminators(node: Any) -> Any:
    """The description with every ``discriminator`` that has no ``mapping`` taken out.

    Without a mapping, OpenAPI's implicit discriminator values are the schemas' names
    (``ChatCompletionMessageToolCall``), while OpenAI's own answers say ``"type":
    "function"``: read strictly, the description refuses every tool call OpenAI sends. The
    ``oneOf`` beneath still checks each object in full."""
    if isinstance(node, dict):
        disc = node.get("discriminator")
        return {
            k: _without_implicit_discriminators(v)
            for k, v in node.items()
            if not (k == "discriminator" and isinstance(disc, dict) and "mapping" not in disc)
        }
    if isinstance(node, list):
        return [_without_implicit_discriminators(v) for v in node]
    return node


@pytest.fixture(scope="module")
def fleet(local_ray: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from ray import serve

    from shoal.serving.app import build_app

    folder: Path = tmp_path_factory.mktemp("schema")
    tiny = {
        "name": "tiny",
        "tier": "small",
        "engine": "llamacpp",
        "source": "file:///tmp/shoal/models/schema-tiny.gguf",
        "resources": {"cpu": "500m"},
        "engineArgs": {"n_ctx": 1024, "logits_all": True,
                       "tiny_model": {"name": "schema-tiny", "reply": "tiny answers."}},
    }  # fmt: skip
    args = BuildArgs(
        fleet_name="schema",
        fleet={
            "routingPolicyRef": {"name": "p"},
            "tiers": [{"name": "small", "costPerReplicaHour": "0.1"}],
            "models": [tiny, {"name": "sim", "tier": "small", "engine": "simulated"}],
        },
        policy={"strategy": "static", "staticOrder": ["tiny", "sim"]},
        model_paths={"tiny": str(folder / "tiny.gguf")},
        limits={"max_tokens": 64, "max_body_bytes": 262144},
    )
    serve.run(build_app(args), name="schema", route_prefix="/")
    yield f"{local_ray.base_url}/v1"
    serve.delete("schema")


@pytest.mark.parametrize(
    ("path", "method"),
    [("/chat/completions", "POST"), ("/completions", "POST"), ("/models", "GET")],
)
def test_generated_requests_get_no_server_error_and_fit_the_description(
    schema: Any, fleet: str, path: str, method: str
) -> None:
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import response_schema_conformance

    operation = schema[path][method]
    seen: dict[int, int] = {}

    @settings(
        max_examples=EXAMPLES[path],
        deadline=None,
        derandomize=True,  # the same examples every run: a failure reproduces
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy())
    def run(case: Any) -> None:
        if isinstance(case.body, dict) and "model" in case.body:
            # Mostly real model names, so that answers (not only 404s) are checked.
            n = sum(seen.values())
            if n % 4 != 3:
                case.body["model"] = MODELS[n % len(MODELS)]
        response = case.call_and_validate(
            base_url=fleet,
            checks=[not_a_server_error, response_schema_conformance],
            timeout=60,
        )
        seen[response.status_code] = seen.get(response.status_code, 0) + 1

    run()
    print(f"{method} {path}: responses by status {dict(sorted(seen.items()))}")
    assert sum(seen.values()) >= EXAMPLES[path] // 2
    if path != "/models":
        assert seen.get(200, 0) > 0, "no generated request was answered"
