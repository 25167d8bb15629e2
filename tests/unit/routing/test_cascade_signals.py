"""The cascade's confidence signals: answer extraction, agreement, structure, the verifier."""

from __future__ import annotations

import numpy as np
import pytest

from shoal.routing import cascade as cs


@pytest.mark.parametrize(
    ("task", "kind"),
    [
        ("arc-challenge", "choice"),
        ("winogrande", "choice"),
        ("mmlu", "choice"),
        ("gsm8k", "number"),
        ("mbpp", "code"),
        ("humaneval", "code"),
        ("chat", "text"),
    ],
)
def test_a_tasks_answer_kind_comes_from_its_name(task: str, kind: str) -> None:
    assert cs.answer_kind(task) == kind


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("A", "A"),
        ("B\n", "B"),
        ("(C) because", "C"),
        ("D) palms covered with lotion", "D"),
        ("The answer is B.", "B"),
        ("Answer: (A)", "A"),
        ("I do not know", None),
        ("Rachel", None),
    ],
)
def test_the_option_letter_is_read_from_the_usual_spellings(text: str, letter: str | None) -> None:
    assert cs.extract_choice(text) == letter


def test_numbers_are_read_last_and_canonical() -> None:
    assert cs.extract_number("3 apples then 1,234.50 dollars") == "1234.5"
    assert cs.extract_number("so x = 42.") == "42"
    assert cs.extract_number("no digits") is None


FENCED = "Here you go:\n\n```python\ndef f(x):\n    '''Doubles.'''\n    return 2 * x\n```\nDone."
TAGGED = " \n[PYTHON]\ndef f(x):\n    return 2*x\n[/PYTHON]\n[TESTS]\nassert f(1) == 2\n[/TESTS]"
JS = "```\nfunction f(x) {\n  return 2 * x;\n}\n```"


def test_code_is_normalised_so_that_formatting_and_docstrings_do_not_matter() -> None:
    assert cs.extract_code(FENCED) == cs.extract_code(TAGGED) == "def f(x):\n    return 2 * x"
    assert cs.extract_code(JS) is None
    assert cs.extract_code("x = 1") is None  # no function


def test_structure_says_whether_an_answer_has_the_shape_its_task_asks_for() -> None:
    assert cs.structure(FENCED, "code") == 1.0
    assert cs.structure("```python\ndef f(x):\n    print(x)\n```", "code") == 0.5
    assert cs.structure(JS, "code") == 0.25
    assert cs.structure("I cannot help with that.", "code") == 0.0
    assert cs.structure("B", "choice") == 1.0
    assert cs.structure("I do", "choice") == 0.0


def test_agreement_is_the_mean_similarity_to_the_other_answers() -> None:
    assert cs.agreement("A", ["A", "B"], "choice") == 0.5
    assert cs.agreement("A", ["A", "A"], "choice") == 1.0
    assert cs.agreement(None, ["A"], "choice") == 0.0
    assert cs.agreement("A", [], "choice") == 0.0
    same = cs.extract_code(FENCED)
    other = cs.extract_code("```python\ndef g(a, b):\n    return sorted(a + b)[::-1]\n```")
    assert cs.agreement(same, [cs.extract_code(TAGGED)], "code") == 1.0
    assert 0.0 < cs.agreement(same, [other], "code") < 0.5


def test_the_logistic_verifier_learns_which_answers_are_right() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 3)) * [1.0, 10.0, 0.1] + [0.0, 50.0, 3.0]
    logit = 2.0 * x[:, 0] - 0.3 * (x[:, 1] - 50.0)
    y = (rng.random(600) < 1 / (1 + np.exp(-logit))).astype(float)
    model = cs.fit_logistic(x, y, l2=0.1)
    p = model.score(x)
    assert p.shape == (600,)
    # Raw features in, standardisation folded into the weights: the signs come out right.
    assert model.weights[0] > 1.0 and model.weights[1] < -0.1
    assert np.mean((p > 0.5) == (y == 1)) > 0.75
    oof = cs.out_of_fold(x, y, folds=5, seed=1, l2=0.1)
    assert np.mean((oof > 0.5) == (y == 1)) > 0.7
    with pytest.raises(ValueError, match="do not match"):
        cs.fit_logistic(x, y[:10])
