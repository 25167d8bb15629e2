"""The fleet endpoint: a Ray Serve application that speaks the OpenAI API.

- :mod:`shoal.serving.app`: ``build_app(args) -> serve.Application``, the builder that
  ``serveConfigV2`` and ``shoal up`` both point at.
- :mod:`shoal.serving.ingress`: the "router" deployment (OpenAI API, routing, fallback).
- :mod:`shoal.serving.engines`: engines behind one protocol (llama.cpp, the load-faithful
  simulator, vLLM through ``ray.serve.llm``).

It reads what the operator renders through :mod:`shoal.contract` and never imports the
operator or planning; the laptop runner (:mod:`shoal.local`) sits above it. Import the
sub-modules you need; this package imports nothing heavy.
"""
