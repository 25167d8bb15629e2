"""Fixtures of the routing integration tests: the serving tests' local Ray, reused."""

from __future__ import annotations

from tests.integration.serving.conftest import LocalRay, free_port, local_ray

__all__ = ["LocalRay", "free_port", "local_ray"]
