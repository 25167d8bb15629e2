"""Fixtures of the routing unit tests: a tiny synthetic calibration set with two topics."""

from __future__ import annotations

import pytest

from shoal.routing import Sample

MATH = ["add the numbers", "solve the equation for x", "multiply two integers", "divide the sum"]
LAW = [
    "contract breach damages",
    "court appeal ruling",
    "tort liability claim",
    "statute of limitations",
]


def topic_samples(n_per_topic: int = 12, *, costs: bool = True) -> list[Sample]:
    """Math prompts where model ``mathy`` is right, law prompts where ``wordy`` is right;
    ``mathy`` costs ten times as much as ``wordy``."""
    out = []
    for i in range(n_per_topic):
        for topic, words, best in (("math", MATH, "mathy"), ("law", LAW, "wordy")):
            prompt = f"{words[i % len(words)]} {words[(i + 1) % len(words)]} case {i}"
            scores = {
                "mathy": 1.0 if best == "mathy" else 0.2,
                "wordy": 1.0 if best == "wordy" else 0.1,
            }
            cost = {"mathy": 0.01, "wordy": 0.001} if costs else {}
            out.append(
                Sample(
                    prompt=prompt, scores=scores, task=topic, costs=cost, origin=f"syn:{len(out)}"
                )
            )
    return out


@pytest.fixture()
def samples() -> list[Sample]:
    return topic_samples()
