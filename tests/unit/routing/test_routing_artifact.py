"""The artifact format: round trip, determinism, integrity checks, atomic writes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shoal.routing import artifact as art
from shoal.routing.artifact import ArtifactError

HEADER = {
    "embedder": {"name": "hash-8", "dim": 8},
    "models": ["a", "b"],
    "clusters": 2,
    "samples": 10,
    "fitted_at": "2026-01-02T03:04:05+00:00",
    "params": {"alpha": 0.7, "top_p": 1, "temperature": 0.1},
}


def arrays() -> dict[str, np.ndarray]:
    return {
        "centroids": np.arange(16, dtype=np.float16).reshape(2, 8),
        "quality": np.array([[0.1, 0.9], [0.8, 0.2]], dtype=np.float32),
        "cost": np.zeros((2, 2), dtype=np.float32),
        "counts": np.array([4, 6], dtype=np.int32),
    }


def test_round_trip_keeps_header_and_arrays() -> None:
    data = art.encode_artifact(HEADER, arrays())
    header, got = art.decode_artifact(data)
    assert header["models"] == ["a", "b"]
    assert header["format_version"] == art.FORMAT_VERSION
    for name, value in arrays().items():
        np.testing.assert_array_equal(got[name], value)
        assert got[name].dtype == value.dtype


def test_encoding_is_deterministic() -> None:
    assert art.encode_artifact(HEADER, arrays()) == art.encode_artifact(dict(HEADER), arrays())


def test_read_artifact_info_reads_the_header() -> None:
    data = art.encode_artifact(HEADER, arrays())
    info = art.read_artifact_info(data)
    assert info.format_version == art.FORMAT_VERSION
    assert (info.clusters, info.models, info.samples) == (2, ["a", "b"], 10)
    assert (info.embedder, info.embedder_dim) == ("hash-8", 8)
    assert info.fitted_at.year == 2026 and info.fitted_at.tzinfo is not None
    assert info.checksum == art.artifact_checksum(data)
    assert info.size_bytes == len(data)


def test_checksum_format() -> None:
    c = art.artifact_checksum(b"abc")
    assert c == "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_read_artifact_info_does_not_import_numpy(tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(art.encode_artifact(HEADER, arrays()))
    code = (
        "import sys, pathlib; from shoal.routing import read_artifact_info;"
        f"i = read_artifact_info(pathlib.Path({str(path)!r}).read_bytes());"
        "assert i.models == ['a', 'b'];"
        "print('numpy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: b"NOTSHOAL" + d[8:], "magic"),
        (lambda d: d[:10], "truncated"),
        (lambda d: d[:40], "truncated"),
        (lambda d: d[:-3], "checksum"),
        (lambda d: d[:-1] + bytes([d[-1] ^ 1]), "checksum"),
        (lambda d: b"", "magic"),
    ],
)
def test_damaged_artifacts_are_refused(mutate: object, message: str) -> None:
    data = art.encode_artifact(HEADER, arrays())
    bad = mutate(data)  # type: ignore[operator]
    with pytest.raises(ArtifactError, match=message):
        art.decode_artifact(bad)


def test_unknown_format_version_is_refused_with_advice() -> None:
    data = art.encode_artifact(HEADER, arrays())
    bumped = data.replace(b'"format_version":1', b'"format_version":9')
    with pytest.raises(ArtifactError, match=r"format_version 9 is not supported.*refit"):
        art.read_artifact_info(bumped)


def test_non_bytes_are_refused() -> None:
    with pytest.raises(ArtifactError, match="bytes"):
        art.read_artifact_info("not bytes")  # type: ignore[arg-type]


def test_unsupported_dtype_is_refused() -> None:
    with pytest.raises(ArtifactError, match="dtype"):
        art.encode_artifact(HEADER, {"x": np.zeros(2, dtype=np.float64)})


def test_write_artifact_is_atomic_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "router.bin"
    art.write_artifact(target, b"first")
    art.write_artifact(target, b"second")
    assert target.read_bytes() == b"second"
    assert sorted(os.listdir(target.parent)) == ["router.bin"]


def test_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "router.bin"
    art.write_artifact(target, b"old")

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(art.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        art.write_artifact(target, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["router.bin"]
