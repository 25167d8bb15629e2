"""The router artifact: a compact, versioned, self-checking binary file.

The operator stores it in a ConfigMap (``binaryData``), the serving layer loads it on every
replica. Layout (all integers little-endian)::

    8 bytes   magic  b"SHOALRTR"
    4 bytes   uint32 length N of the header
    N bytes   header: UTF-8 JSON (format_version, embedder, models, clusters, samples,
              fitted_at, params, arrays, payload_sha256, ...)
    rest      payload: the arrays named in header["arrays"], each at its offset, raw
              little-endian, C order

The header alone answers "what is this artifact" (:func:`read_artifact_info`) without numpy.
:func:`decode_artifact` checks the payload's sha256 before handing arrays out, so a truncated
or corrupted ConfigMap is refused instead of routing on garbage. Pure functions, except
:func:`write_artifact` which writes a file atomically (temporary file, fsync, rename).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

MAGIC = b"SHOALRTR"
FORMAT_VERSION = 1
_LEN = struct.Struct("<I")
_DTYPES = ("float16", "float32", "int32")


class ArtifactError(ValueError):
    """The bytes are not a router artifact this version of Shoal can read."""


@dataclass(frozen=True)
class ArtifactInfo:
    """What an artifact is, read from its header alone."""

    format_version: int
    clusters: int
    models: list[str]
    samples: int
    embedder: str
    embedder_dim: int
    fitted_at: datetime
    params: dict[str, Any]
    size_bytes: int
    checksum: str
    #: 1 when fitted, one more at every accepted refit from feedback.
    version: int = 1
    #: When it was last refit from feedback (None: never).
    refit_at: datetime | None = None


def artifact_checksum(data: bytes) -> str:
    """The artifact's identity as the operator reports it: ``"sha256:<hex>"``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _split(data: bytes) -> tuple[dict[str, Any], bytes]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ArtifactError(f"artifact must be bytes, not {type(data).__name__}")
    data = bytes(data)
    if not data.startswith(MAGIC):
        raise ArtifactError("not a Shoal router artifact (bad magic bytes)")
    if len(data) < len(MAGIC) + _LEN.size:
        raise ArtifactError("truncated router artifact (no header length)")
    (n,) = _LEN.unpack_from(data, len(MAGIC))
    start = len(MAGIC) + _LEN.size
    if start + n > len(data):
        raise ArtifactError("truncated router artifact (header runs past the end)")
    try:
        header = json.loads(data[start : start + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"corrupt router artifact header: {exc}") from exc
    if not isinstance(header, dict):
        raise ArtifactError("corrupt router artifact header: not a JSON object")
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"router artifact format_version {version!r} is not supported "
            f"(this Shoal reads version {FORMAT_VERSION}); refit the router"
        )
    return header, data[start + n :]


def read_artifact_info(data: bytes) -> ArtifactInfo:
    """Parse the header only (no numpy): models, clusters, embedder, when it was fitted."""
    header, _ = _split(data)
    try:
        return ArtifactInfo(
            format_version=int(header["format_version"]),
            clusters=int(header["clusters"]),
            models=[str(m) for m in header["models"]],
            samples=int(header["samples"]),
            embedder=str(header["embedder"]["name"]),
            embedder_dim=int(header["embedder"]["dim"]),
            fitted_at=datetime.fromisoformat(header["fitted_at"]),
            params=dict(header.get("params", {})),
            size_bytes=len(data),
            checksum=artifact_checksum(bytes(data)),
            version=int((header.get("refit") or {}).get("version", 1)),
            refit_at=datetime.fromisoformat(header["refit"]["refit_at"])
            if (header.get("refit") or {}).get("refit_at")
            else None,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"corrupt router artifact header: {exc!r}") from exc


def encode_artifact(header: dict[str, Any], arrays: dict[str, npt.NDArray[Any]]) -> bytes:
    """Serialise ``header`` (JSON-able) and named arrays into artifact bytes.

    Deterministic: the same inputs give the same bytes (sorted keys, fixed layout).
    """
    import numpy as np

    payload = bytearray()
    table: dict[str, dict[str, Any]] = {}
    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name])
        if arr.dtype.name not in _DTYPES:
            raise ArtifactError(f"array {name!r} has unsupported dtype {arr.dtype}")
        arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        while len(payload) % 8:
            payload.append(0)
        table[name] = {
            "dtype": arr.dtype.name,
            "shape": list(arr.shape),
            "offset": len(payload),
        }
        payload += arr.tobytes(order="C")
    full = dict(header)
    full["format_version"] = FORMAT_VERSION
    full["arrays"] = table
    full["payload_sha256"] = hashlib.sha256(payload).hexdigest()
    head = json.dumps(full, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return MAGIC + _LEN.pack(len(head)) + head + bytes(payload)


def decode_artifact(data: bytes) -> tuple[dict[str, Any], dict[str, npt.NDArray[Any]]]:
    """Parse artifact bytes into its header and arrays, verifying the payload checksum."""
    import numpy as np

    header, payload = _split(data)
    if hashlib.sha256(payload).hexdigest() != header.get("payload_sha256"):
        raise ArtifactError("router artifact payload checksum mismatch (truncated or corrupt)")
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    try:
        for name, spec in header["arrays"].items():
            dtype = np.dtype(spec["dtype"]).newbyteorder("<")
            shape = tuple(int(s) for s in spec["shape"])
            count = int(np.prod(shape)) if shape else 1
            offset = int(spec["offset"])
            if offset + count * dtype.itemsize > len(payload):
                raise ArtifactError(f"router artifact array {name!r} runs past the end")
            arr = np.frombuffer(payload, dtype=dtype, count=count, offset=offset)
            arrays[name] = arr.reshape(shape).astype(dtype.newbyteorder("="))
    except (KeyError, TypeError) as exc:
        raise ArtifactError(f"corrupt router artifact array table: {exc!r}") from exc
    return header, arrays


def write_artifact(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: readers see the old file or the new, never half."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
