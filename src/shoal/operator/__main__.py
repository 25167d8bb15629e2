"""``python -m shoal.operator``: run the Shoal operator.

Flags choose the namespaces to watch, peering (several operator replicas, one active), log
format and the metrics port; everything else comes from ``SHOAL_*`` environment variables
(:mod:`shoal.operator.config`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import kopf


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m shoal.operator", description=__doc__)
    p.add_argument("-n", "--namespace", action="append", default=[],
                   help="namespace to watch (repeatable; default: all namespaces)")  # fmt: skip
    p.add_argument("--peering", default=os.environ.get("SHOAL_PEERING", ""),
                   help="kopf peering name: replicas sharing it run one at a time "
                   "(needs kopf's peering CRDs); empty: standalone")  # fmt: skip
    p.add_argument("--log-format", choices=["plain", "full", "json"],
                   default=os.environ.get("SHOAL_LOG_FORMAT", "plain"))  # fmt: skip
    p.add_argument("--metrics-port", type=int,
                   default=int(os.environ.get("SHOAL_METRICS_PORT", "8080")),
                   help="port of the Prometheus /metrics endpoint (0: off)")  # fmt: skip
    p.add_argument("--liveness", default=os.environ.get("SHOAL_LIVENESS", ""),
                   help="kopf liveness endpoint, e.g. http://0.0.0.0:8081/healthz")  # fmt: skip
    p.add_argument("--verbose", action="store_true", help="debug logging")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    kopf.configure(
        verbose=args.verbose,
        log_format={"plain": kopf.LogFormat.PLAIN, "full": kopf.LogFormat.FULL,
                    "json": kopf.LogFormat.JSON}[args.log_format],
    )  # fmt: skip
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port)
        logging.getLogger(__name__).info("metrics on :%d/metrics", args.metrics_port)
    import shoal.operator.handlers  # noqa: F401  (registers the handlers)

    kopf.run(
        standalone=not args.peering,
        peering_name=args.peering or None,
        namespaces=list(args.namespace),
        clusterwide=not args.namespace,
        liveness_endpoint=args.liveness or None,
    )


if __name__ == "__main__":
    main()
