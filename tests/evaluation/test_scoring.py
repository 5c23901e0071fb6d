from hone.evaluation.scoring import contains_match, exact_match, normalize, score, strip_reasoning, token_f1


def test_normalize():
    assert normalize("  The Capital,  of ITALY is Rome! ") == "the capital of italy is rome"


def test_exact_and_contains():
    assert exact_match("the capital of italy is rome", "The capital of Italy is Rome.") == 1.0
    assert exact_match("Rome", "The capital of Italy is Rome.") == 0.0
    assert contains_match("I think the answer is: Rome.", "rome") == 1.0
    assert contains_match("Romeo", "Rome") == 0.0  # word boundaries
    assert contains_match("", "") == 1.0


def test_token_f1():
    assert token_f1("the capital is Rome", "The capital of Italy is Rome.") == 2 * (4 / 4) * (4 / 6) / (1 + 4 / 6)
    assert token_f1("Paris", "Rome") == 0.0
    assert token_f1("", "") == 1.0
    assert score("Rome", "Rome") == {"exact_match": 1.0, "contains": 1.0, "f1": 1.0}


def test_strip_reasoning():
    assert strip_reasoning("<think>\nsum it\n</think>\n\n7 plus 16 is 23.") == "7 plus 16 is 23."
    assert strip_reasoning("no reasoning") == "no reasoning"
