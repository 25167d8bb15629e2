"""``python -m shoal.operator``: run the Shoal operator.

Flags choose the namespaces to watch, peering (several operator replicas, one active), log
format and the metrics port; everything else comes from ``SHOAL_*`` environment variables
(:mod:`shoal.operator.config`).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import zlib

import kopf


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m shoal.operator", description=__doc__)
    p.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="namespace to watch (repeatable; default: all namespaces)",
    )
    p.add_argument(
        "--peering",
        default=os.environ.get("SHOAL_PEERING", ""),
        help="kopf peering name: replicas sharing it run one at a time "
        "(needs kopf's peering CRDs); empty: standalone",
    )
    p.add_argument(
        "--priority",
        type=int,
        default=None,
        help="kopf peering priority: of the live peers the highest runs, the others "
        "stand by; default: derived from POD_ID, so replicas differ",
    )
    p.add_argument(
        "--log-format",
        choices=["plain", "full", "json"],
        default=os.environ.get("SHOAL_LOG_FORMAT", "plain"),
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=int(os.environ.get("SHOAL_METRICS_PORT", "8080")),
        help="port of the Prometheus /metrics endpoint (0: off)",
    )
    p.add_argument(
        "--liveness",
        default=os.environ.get("SHOAL_LIVENESS", ""),
        help="kopf liveness endpoint, e.g. http://0.0.0.0:8081/healthz",
    )
    p.add_argument("--verbose", action="store_true", help="debug logging")
    return p.parse_args(argv)


def peering_priority(explicit: int | None, pod_id: str | None) -> int:
    """This replica's peering priority. kopf pauses *every* live peer when two share a
    priority, so replicas need distinct ones: derived from the pod's name unless given."""
    if explicit is not None:
        return explicit
    seed = pod_id or f"{socket.gethostname()}/{os.getpid()}"
    return zlib.crc32(seed.encode()) % 1_000_000


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    kopf.configure(
        verbose=args.verbose,
        log_format={
            "plain": kopf.LogFormat.PLAIN,
            "full": kopf.LogFormat.FULL,
            "json": kopf.LogFormat.JSON,
        }[args.log_format],
    )
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port)
        logging.getLogger(__name__).info("metrics on :%d/metrics", args.metrics_port)
    import shoal.operator.handlers  # noqa: F401  (registers the handlers)

    kopf.run(
        standalone=not args.peering,
        peering_name=args.peering or None,
        priority=peering_priority(args.priority, os.environ.get("POD_ID"))
        if args.peering
        else None,
        namespaces=list(args.namespace),
        clusterwide=not args.namespace,
        liveness_endpoint=args.liveness or None,
    )


if __name__ == "__main__":
    main()
