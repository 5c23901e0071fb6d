"""validate_messages: one clear message per bad row, None for a valid one."""
from __future__ import annotations

import pytest

from hone.data.messages import validate_messages


def chat(*msgs):
    return {"messages": [{"role": r, "content": c} for r, c in msgs]}


VALID = chat(("system", "Be kind."), ("user", "Hi"), ("assistant", "Hello"))


@pytest.mark.parametrize("row", [
    VALID,
    chat(("user", "Hi"), ("assistant", "Hello"), ("user", "More"), ("assistant", "Sure")),
    chat(("user", "Weather?"), ("assistant", "Checking"), ("tool", "Sunny"), ("assistant", "Sunny.")),
    {"messages": [{"role": "user", "content": "2+2?"},
                  {"role": "assistant", "content": "4", "reasoning_content": "Two and two."}]},
    {"messages": [{"role": "user", "content": "Weather?"},
                  {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "w"}}]}]},
    chat(("pretraining", "Some document text.")),
    chat(("pretraining", "Part one."), ("pretraining", "Part two.")),
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}], "id": 7},
])
def test_valid_rows(row):
    assert validate_messages(row) is None


def test_missing_messages_field():
    err = validate_messages({"conversation": [], "id": 1})
    assert err is not None
    assert "no 'messages' field" in err
    assert "conversation, id" in err  # names the keys it did find


def test_not_an_object():
    err = validate_messages([{"role": "user", "content": "Hi"}])
    assert err is not None and "row is a list" in err


@pytest.mark.parametrize("msgs", [[], "hello", None])
def test_messages_not_a_nonempty_list(msgs):
    err = validate_messages({"messages": msgs})
    assert err is not None and "non-empty list" in err


def test_message_not_an_object():
    err = validate_messages({"messages": [{"role": "user", "content": "Hi"}, "Hello"]})
    assert err is not None and err.startswith("messages[1] is a str")


def test_unknown_role():
    err = validate_messages(chat(("user", "Hi"), ("bot", "Hello")))
    assert err is not None
    assert err.startswith("messages[1] has unknown role 'bot'")
    assert "assistant" in err  # lists the allowed roles


def test_missing_role():
    err = validate_messages({"messages": [{"content": "Hi"}, {"role": "assistant", "content": "Yo"}]})
    assert err is not None and err.startswith("messages[0] has unknown role None")


@pytest.mark.parametrize("content, typename", [(42, "int"), (None, "NoneType"), (["Hi"], "list"),
                                               ({"text": "Hi"}, "dict")])
def test_non_string_content(content, typename):
    row = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": content}]}
    err = validate_messages(row)
    assert err == f"messages[1] (assistant) content is {typename}, expected a string"


def test_missing_content():
    err = validate_messages({"messages": [{"role": "user"}, {"role": "assistant", "content": "Yo"}]})
    assert err == "messages[0] (user) content is NoneType, expected a string"


@pytest.mark.parametrize("content", ["", "   ", "\n\t"])
def test_empty_content(content):
    err = validate_messages(chat(("user", "Hi"), ("assistant", content)))
    assert err == "messages[1] (assistant) content is empty"


def test_reasoning_content_only_on_assistant_and_a_string():
    bad_role = {"messages": [{"role": "user", "content": "Hi", "reasoning_content": "hmm"},
                             {"role": "assistant", "content": "Yo"}]}
    bad_type = {"messages": [{"role": "user", "content": "Hi"},
                             {"role": "assistant", "content": "Yo", "reasoning_content": 3}]}
    assert validate_messages(bad_role).startswith("messages[0] reasoning_content")
    assert validate_messages(bad_type).startswith("messages[1] reasoning_content")


def test_no_assistant_turn_rejected_unless_unmask_messages():
    row = chat(("system", "Be kind."), ("user", "Hi"), ("tool", "result"))
    err = validate_messages(row)
    assert err is not None
    assert "no assistant turn" in err and "unmask_messages=True" in err
    assert validate_messages(row, unmask_messages=True) is None


@pytest.mark.parametrize("other", ["user", "assistant", "system"])
def test_pretraining_mixed_with_chat_roles(other):
    for row in (chat(("pretraining", "Doc."), (other, "Hi")), chat((other, "Hi"), ("pretraining", "Doc."))):
        err = validate_messages(row)
        assert err == "a sample with a 'pretraining' message must hold only 'pretraining' messages"
