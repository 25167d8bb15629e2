"""Ray Serve LLM's server, unchanged, that also tells tests what it was asked.

:class:`RecordingLLMServer` is ``ray.serve.llm``'s ``LLMServer`` (so vLLM itself serves
every request) that keeps, per request, the method and whether it asked for a stream, and
hands the list over through :meth:`RecordingLLMServer.requests_seen`. The vLLM tests deploy it
in place of ``LLMServer`` (``build_vllm_deployment(..., server_cls=...)``, the same
``LLMConfig`` Shoal renders) to check that a client's unstreamed request reaches vLLM
unstreamed. Needs vLLM (``ray.serve.llm`` imports it). Never part of a fleet.
"""

from __future__ import annotations

from typing import Any

from ray.serve.llm.deployment import LLMServer


class RecordingLLMServer(LLMServer):  # type: ignore[misc,unused-ignore]
    """``LLMServer`` recording ``(method, stream)`` of every chat and completion request."""

    async def __init__(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[misc]
        self._seen: list[tuple[str, bool]] = []
        await super().__init__(*args, **kwargs)

    async def chat(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        self._seen.append(("chat", bool(getattr(request, "stream", False))))
        return await super().chat(request, *args, **kwargs)

    async def completions(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        self._seen.append(("completions", bool(getattr(request, "stream", False))))
        return await super().completions(request, *args, **kwargs)

    async def requests_seen(self) -> list[tuple[str, bool]]:
        """Every request so far, oldest first: its method and whether it streamed."""
        return list(self._seen)
