"""The fleet endpoint: a Ray Serve application that speaks the OpenAI API.

- :mod:`shoal.serving.config`: the contract with the operator (:class:`BuildArgs`, deployment
  names and settings); no Ray import.
- :mod:`shoal.serving.app`: ``build_app(args) -> serve.Application``, the builder that
  ``serveConfigV2`` and ``shoal up`` both point at.
- :mod:`shoal.serving.ingress`: the "router" deployment (OpenAI API, routing, fallback).
- :mod:`shoal.serving.engines`: engines behind one protocol (llama.cpp, the load-faithful
  simulator, vLLM through ``ray.serve.llm``).
- :mod:`shoal.serving.local`: ``shoal up`` / ``shoal down`` on a laptop.

Import the sub-modules you need; this package imports nothing heavy.
"""
