"""``shoal router fit / eval / info`` through typer's runner, with the hashing embedder."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from conftest import topic_samples
from shoal.cli import app

runner = CliRunner()


def write_jsonl(path: Path, *, costs: bool = True) -> Path:
    lines = []
    for s in topic_samples(costs=costs):
        obj: dict[str, object] = {"prompt": s.prompt, "task": s.task, "scores": dict(s.scores)}
        if s.costs:
            obj["costs"] = dict(s.costs)
        lines.append(json.dumps(obj))
    path.write_text("\n".join(lines) + "\n")
    return path


def fit_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "router", "fit", "--data", str(data), "--out", str(out), "--embedder", "hash-128",
        "--clusters", "2", "--top-p", "1", "--alpha", "0.9", "--no-cache", *extra,
    ]  # fmt: skip


def test_fit_then_eval_json(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "cal.jsonl")
    out = tmp_path / "router.bin"
    res = runner.invoke(app, fit_args(data, out))
    assert res.exit_code == 0, res.output
    assert out.is_file() and "2 clusters x 2 models" in res.output
    res = runner.invoke(
        app,
        ["router", "eval", "--artifact", str(out), "--data", str(data), "--json", "--no-cache",
         "--plot", str(tmp_path / "frontier.png")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout[res.stdout.index("{") :])
    assert report["router"]["alpha"] == 0.9
    assert report["router"]["accuracy"] == 1.0
    assert report["baselines"]["best_single"]["model"] in ("mathy", "wordy")
    assert (tmp_path / "frontier.png").read_bytes()[:4] == b"\x89PNG"


def test_eval_alpha_option_and_table_output(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "cal.jsonl")
    out = tmp_path / "router.bin"
    assert runner.invoke(app, fit_args(data, out)).exit_code == 0
    res = runner.invoke(
        app, ["router", "eval", "-a", str(out), "-d", str(data), "--alpha", "0", "--no-cache"]
    )
    assert res.exit_code == 0, res.output
    assert "router at alpha=0" in res.output and "oracle" in res.output


def test_info_prints_the_header(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "cal.jsonl")
    out = tmp_path / "router.bin"
    assert runner.invoke(app, fit_args(data, out)).exit_code == 0
    res = runner.invoke(app, ["router", "info", str(out)])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["models"] == ["mathy", "wordy"] and info["checksum"].startswith("sha256:")


def test_bad_data_exits_2_naming_file_and_row_and_writes_nothing(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "cal.jsonl")
    with data.open("a") as fh:
        fh.write('{"prompt": "x", "scores": {"mathy": "NaN", "wordy": 0}}\n')
    out = tmp_path / "router.bin"
    res = runner.invoke(app, fit_args(data, out))
    assert res.exit_code == 2
    assert f"{data}, row 25" in res.output.replace("\n", "")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cal.jsonl"]


def test_mismatched_files_exit_2(tmp_path: Path) -> None:
    first = write_jsonl(tmp_path / "a.jsonl")
    second = tmp_path / "b.jsonl"
    second.write_text(
        '{"prompt": "x", "scores": {"mathy": 1, "gpt": 0}, "costs": {"mathy": 1, "gpt": 0}}\n'
    )
    res = runner.invoke(app, fit_args(first, tmp_path / "r.bin", "--data", str(second)))
    assert res.exit_code == 2
    assert "b.jsonl, row 1: model set differs" in res.output.replace("\n", "")


def test_eval_on_data_with_unknown_models_exits_2(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "cal.jsonl")
    out = tmp_path / "router.bin"
    assert runner.invoke(app, fit_args(data, out)).exit_code == 0
    other = tmp_path / "other.jsonl"
    other.write_text('{"prompt": "x", "scores": {"mathy": 1, "gpt": 0}}\n')
    res = runner.invoke(app, ["router", "eval", "-a", str(out), "-d", str(other), "--no-cache"])
    assert res.exit_code == 2
    assert "other.jsonl, row 1: unknown models ['gpt']" in res.output.replace("\n", "")


def test_eval_on_a_corrupt_artifact_exits_2(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "cal.jsonl")
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"garbage")
    res = runner.invoke(app, ["router", "eval", "-a", str(bad), "-d", str(data)])
    assert res.exit_code == 2 and "not a Shoal router artifact" in res.output
    res = runner.invoke(app, ["router", "info", str(tmp_path / "missing.bin")])
    assert res.exit_code == 2 and "cannot read router artifact" in res.output


def test_empty_file_exits_2(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    res = runner.invoke(app, fit_args(empty, tmp_path / "r.bin"))
    assert res.exit_code == 2 and "empty.jsonl: empty file" in res.output


def test_data_takes_several_paths_after_one_option(tmp_path: Path) -> None:
    """`--data a b` reads both files, as the help says (here: the second one's rows count)."""
    first = write_jsonl(tmp_path / "a.jsonl")
    second = write_jsonl(tmp_path / "b.jsonl")
    out = tmp_path / "r.bin"
    args = ["router", "fit", "--data", str(first), str(second), "--out", str(out),
            "--embedder", "hash-128", "--clusters", "2", "--top-p", "1", "--no-cache"]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    rows = len(first.read_text().splitlines())
    assert f"{2 * rows} samples" in res.output.replace("\n", "")
    res = runner.invoke(app, ["router", "eval", "-a", str(out), "--data", str(first), str(second),
                              "--json", "--no-cache"])  # fmt: skip
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["data"] == [str(first), str(second)]
