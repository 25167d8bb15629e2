"""Pure planning: from validated custom resources to the objects that should exist, and from
observed objects back to status.

No I/O and no hidden clock reads: callers pass ``now``. The operator's handlers call these
functions and apply the result; most of the operator's tests live here.

- :mod:`shoal.planning.names`: stable names and labels of a fleet's children.
- :mod:`shoal.planning.children`: the desired RayService, router ConfigMap and Service.
- :mod:`shoal.planning.status`: fleet and policy status from what was observed.
- :mod:`shoal.planning.conditions`: Kubernetes condition bookkeeping.
"""
