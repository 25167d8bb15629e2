"""Where the operator may send requests on a policy's behalf: never to link-local or cloud
metadata addresses, and only within its allowlist where it has one (resolution faked with a
table: the addresses are what is under test)."""

from __future__ import annotations

import pytest

from shoal.operator.destinations import NOT_ALLOWED, REFUSED, Allowlist, destination_problem

TABLE = {
    "embed.example": ["203.0.113.7"],
    "sneaky.example": ["203.0.113.8", "169.254.169.254"],  # one bad address is enough
    "v6.example": ["fe80::1"],
    "mapped.example": ["::ffff:169.254.169.254"],
    "calibration.svc": ["10.1.2.3"],
}


def resolve(host: str, port: int) -> list[str]:
    return TABLE[host]


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://[fd00:ec2::254]/latest/",
        "http://100.100.100.200/latest/meta-data/",
        "http://sneaky.example/cal.jsonl",
        "https://v6.example/v1",
        "http://mapped.example/",
        "http://0.0.0.0:8080/",
    ],
)
def test_link_local_and_metadata_are_always_refused(url: str) -> None:
    problem = destination_problem(url, Allowlist.parse("0.0.0.0/0, ::/0"), resolve)
    assert problem is not None and problem.reason == REFUSED, url


def test_other_destinations_pass_without_an_allowlist() -> None:
    assert destination_problem("https://embed.example/v1", None, resolve) is None
    assert destination_problem("http://127.0.0.1:8000/v1", None, resolve) is None


def test_the_allowlist_admits_by_name_or_network() -> None:
    allow = Allowlist.parse("embed.example, 10.0.0.0/8")
    assert destination_problem("https://embed.example/v1", allow, resolve) is None
    assert destination_problem("http://calibration.svc/cal.jsonl", allow, resolve) is None
    other = destination_problem("http://127.0.0.1:9/v1", allow, resolve)
    assert other is not None and other.reason == NOT_ALLOWED
    assert destination_problem("http://a.embed.example/", Allowlist.parse("*.embed.example"),
                               lambda h, p: ["203.0.113.9"]) is None  # fmt: skip


def test_a_bad_allowlist_entry_is_named() -> None:
    from shoal.operator.config import OperatorConfig

    with pytest.raises(ValueError, match=r"SHOAL_OUTBOUND_ALLOW.*not a host"):
        OperatorConfig.from_env({"SHOAL_OUTBOUND_ALLOW": "embed.example, http://x/"})
