"""A LoRA adapter as a model of its own in the ingress: ``<model>:<adapter>``.

Built by :class:`shoal.serving.ingress.Endpoint` for every adapter of a model it has a
client for. An :class:`AdapterClient` is the base model's client with the adapter named in
each request (Ray Serve LLM then serves it as the multiplexed model ``<model>:<adapter>``),
so that the rest of the request path treats an adapter like any model: a client names it,
the router ranks it (``staticOrder`` or a router artifact may hold ``<model>:<adapter>``), the
fallback moves past it, and its requests, tokens and costs are counted under its own name.
It runs on the base model's replicas, at the base model's price.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

from shoal.contract import BuildArgs
from shoal.contract.lora import adapter_routes
from shoal.serving.clients import ModelClient
from shoal.serving.engines.base import Chunk, GenerationRequest


class AdapterClient:
    """The base model's client, with the adapter set on every request."""

    def __init__(self, route: str, adapter: str, base: ModelClient) -> None:
        self.adapter = adapter
        self.base = base
        self.info = dataclasses.replace(base.info, name=route)
        #: An unstreamed answer comes whole when it does from the base model's client.
        self.answers_whole = bool(getattr(base, "answers_whole", False))

    def stream(self, request: GenerationRequest, coalesce: bool) -> AsyncIterator[Chunk]:
        return self.base.stream(dataclasses.replace(request, adapter=self.adapter), coalesce)

    async def probe(self) -> None:
        await self.base.probe()


def adapter_clients(args: BuildArgs, clients: dict[str, ModelClient]) -> dict[str, ModelClient]:
    """A client per adapter of the models in ``clients``, by ``<model>:<adapter>``."""
    return {
        route: AdapterClient(route, adapter, clients[model])
        for route, (model, adapter) in adapter_routes(args.fleet).items()
        if model in clients
    }


def base_model(name: str) -> str:
    """The model an adapter runs on (a model's own name for a model)."""
    return name.partition(":")[0]
