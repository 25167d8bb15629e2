"""Shoal: serve a fleet of small specialist language models behind one routed endpoint.

The package is layered; higher layers import lower ones only:

- ``shoal.cli``: the ``shoal`` command.
- ``shoal.operator``, ``shoal.serving``, ``shoal.sim``: entry points (kopf operator, Ray Serve
  application, fleet simulator).
- ``shoal.planning``, ``shoal.routing``, ``shoal.autoscaling``: pure logic.
- ``shoal.api``: the custom resources as Pydantic models, and the CRDs generated from them.
"""

__version__ = "0.1.0"
