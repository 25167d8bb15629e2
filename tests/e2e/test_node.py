"""The real node itself: what keeps pod traffic on this machine."""

from __future__ import annotations

import subprocess

from shoal.devtools.testing.node import NodeCluster


def test_pod_traffic_stays_on_this_machine(cluster: NodeCluster) -> None:
    """The node's egress rule is the first of FORWARD, and drops pod traffic to outside."""
    rules = subprocess.run(["iptables", "-w", "-S", "FORWARD"], capture_output=True, text=True)
    assert rules.stdout.splitlines()[1] == "-A FORWARD -j SHOAL-NODE-FORWARD", rules.stdout
    chain = subprocess.run(
        ["iptables", "-w", "-S", "SHOAL-NODE-FORWARD"], capture_output=True, text=True
    ).stdout
    assert "-j DROP" in chain and "RETURN" in chain
