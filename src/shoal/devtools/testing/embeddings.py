"""An OpenAI-compatible ``/v1/embeddings`` endpoint on loopback, for tests and benchmarks.

It speaks the real protocol over real HTTP; its model is Shoal's hashed bag of words
(:class:`~shoal.routing.embedders.hashing.HashingEmbedder`), which embeds in microseconds,
so tests of what surrounds an ``openai`` embedder (fits, API keys, permissions) do not wait
minutes for a transformer on a busy two-core machine. With ``api_key`` it answers requests
without ``Authorization: Bearer <api_key>`` with an OpenAI-shaped 401, as a real endpoint does.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class EmbeddingsEndpoint:
    """A running endpoint: its base URL (ending in ``/v1``) and the Authorization headers seen."""

    url: str
    authorizations: list[str | None] = field(default_factory=list)


@contextmanager
def serve_embeddings(*, dim: int = 64, api_key: str | None = None) -> Iterator[EmbeddingsEndpoint]:
    """Run the endpoint in a thread for the duration of the ``with`` block."""
    from shoal.routing.embedders.hashing import HashingEmbedder

    embedder = HashingEmbedder(dim)
    endpoint = EmbeddingsEndpoint(url="")

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, payload: dict[str, Any]) -> None:
            out = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def do_POST(self) -> None:
            seen = self.headers.get("Authorization")
            endpoint.authorizations.append(seen)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if api_key is not None and seen != f"Bearer {api_key}":
                error = {
                    "message": "Incorrect API key provided.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "invalid_api_key",
                }
                self._send(401, {"error": error})
                return
            texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
            vectors = embedder.embed(texts).tolist()
            self._send(
                200,
                {
                    "object": "list",
                    "model": body.get("model", ""),
                    "data": [
                        {"object": "embedding", "index": i, "embedding": v}
                        for i, v in enumerate(vectors)
                    ],
                },
            )

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    endpoint.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield endpoint
    finally:
        server.shutdown()
        server.server_close()
