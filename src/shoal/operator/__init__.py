"""The Shoal operator: kopf handlers that reconcile ModelFleets and RoutingPolicies.

- :mod:`shoal.operator.gateway`: the one narrow door to the Kubernetes API (server-side
  apply, status patches), mapping API failures to kopf's error vocabulary.
- :mod:`shoal.operator.config`: operator settings from flags and the environment.
- :mod:`shoal.operator.fleets` / :mod:`shoal.operator.policies`: reconcile one object: read,
  call :mod:`shoal.planning`, apply, write status.
- :mod:`shoal.operator.handlers`: the kopf registrations (thin).
- :mod:`shoal.operator.metrics`: Prometheus metrics of the operator itself.
- ``python -m shoal.operator``: the entry point.
"""
