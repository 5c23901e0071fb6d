"""Label masking with real chat templates on the tiny tokenizer.

Every test decodes the tokens whose label is not -100 and compares the text with what the model should
learn to generate, written out by hand.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from transformers import AutoTokenizer

from hone.data.tokenize import IGNORE, check_chat_tokenizer, tokenize_conversation
from hone.errors import HoneError

# -- templates ---------------------------------------------------------------------------------------------

# (b) Llama-3 header style: BOS, then a header per message, content trimmed, <|eot_id|> ends every turn.
LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
LLAMA3_SPECIAL = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]

# (c) Every assistant turn opens with a think block (empty when there is no reasoning_content); the
# generation prompt stops before it, so the think block is part of what the model generates.
THINK_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n<think>\\n' + (message.get('reasoning_content') or '') + '\\n</think>\\n\\n'"
    " + message['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# (d) Plain text, no special token anywhere: nothing marks the end of a turn.
PLAIN_TEMPLATE = (
    "{%- for m in messages %}"
    "{%- if m['role'] == 'system' %}{{- m['content'] + '\\n\\n' }}"
    "{%- elif m['role'] == 'user' %}{{- '### User:\\n' + m['content'] + '\\n' }}"
    "{%- else %}{{- '### Assistant:\\n' + m['content'] + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '### Assistant:\\n' }}{%- endif %}"
)

# (e) Plain text with one EOS at the very end of the conversation: the only special token is far past
# every turn but the last.
PLAIN_EOS_TEMPLATE = PLAIN_TEMPLATE + "{%- if not add_generation_prompt %}{{- eos_token }}{%- endif %}"

# ChatML that also renders tool calls after the content (Qwen-style).
TOOLS_TEMPLATE = (
    "{%- for m in messages %}"
    "{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] }}"
    "{%- for c in m.get('tool_calls') or [] %}"
    "{{- '<tool_call>' + c['function']['name'] + '</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

MULTI_TURN = [
    {"role": "system", "content": "You are kind."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello friend"},
    {"role": "user", "content": "And more?"},
    {"role": "assistant", "content": "Yes, more."},
]


# -- fixtures and helpers ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def llama_tok(tiny_model_dir):
    t = AutoTokenizer.from_pretrained(tiny_model_dir)
    t.add_special_tokens({"bos_token": "<|begin_of_text|>", "additional_special_tokens": LLAMA3_SPECIAL},
                         replace_extra_special_tokens=False)
    t.chat_template = LLAMA3_TEMPLATE
    return t


@pytest.fixture(scope="module")
def think_tok(tiny_model_dir):
    t = AutoTokenizer.from_pretrained(tiny_model_dir)
    t.chat_template = THINK_TEMPLATE
    return t


@pytest.fixture(scope="module")
def plain_tok(tiny_model_dir):
    t = AutoTokenizer.from_pretrained(tiny_model_dir)
    t.chat_template = PLAIN_TEMPLATE
    return t


@pytest.fixture(scope="module")
def plain_eos_tok(tiny_model_dir):
    t = AutoTokenizer.from_pretrained(tiny_model_dir)
    t.chat_template = PLAIN_EOS_TEMPLATE
    return t


@pytest.fixture(scope="module", params=["plain_markers", "special_markers"])
def tools_tok(request, tiny_model_dir):
    t = AutoTokenizer.from_pretrained(tiny_model_dir)
    if request.param == "special_markers":
        # Hermes/Qwen-style: the tool-call markers are special tokens themselves, so the first special token
        # after the content is not the end of the turn
        t.add_special_tokens({"additional_special_tokens": ["<tool_call>", "</tool_call>"]},
                             replace_extra_special_tokens=False)
    t.chat_template = TOOLS_TEMPLATE
    return t


def _decode(tok, ids):
    return tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def trained(tok, messages, **kw):
    """(rendered text, all trained text, trained text per contiguous run of unmasked tokens)."""
    t = tokenize_conversation(tok, messages, **kw)
    assert len(t.input_ids) == len(t.labels)
    assert all(lab in (IGNORE, i) for i, lab in zip(t.input_ids, t.labels)), "a label differs from its token"
    runs, cur = [], []
    for i, lab in zip(t.input_ids, t.labels):
        if lab != IGNORE:
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    unmasked = [i for i, lab in zip(t.input_ids, t.labels) if lab != IGNORE]
    return _decode(tok, t.input_ids), _decode(tok, unmasked), [_decode(tok, r) for r in runs]


# -- (a) ChatML, the tiny model's own template -------------------------------------------------------------

def test_chatml_multi_turn_trains_both_assistant_turns_only(tok):
    text, unmasked, runs = trained(tok, MULTI_TURN)
    assert text == ("<|im_start|>system\nYou are kind.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
                    "<|im_start|>assistant\nHello friend<|im_end|>\n<|im_start|>user\nAnd more?<|im_end|>\n"
                    "<|im_start|>assistant\nYes, more.<|im_end|>\n")
    assert unmasked == "Hello friend<|im_end|>Yes, more.<|im_end|>"
    assert runs == ["Hello friend<|im_end|>", "Yes, more.<|im_end|>"]


def test_chatml_system_message_is_masked(tok):
    msgs = [{"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "Name a color"},
            {"role": "assistant", "content": "Blue"}]
    _, unmasked, runs = trained(tok, msgs)
    assert unmasked == "Blue<|im_end|>"
    assert runs == ["Blue<|im_end|>"]


def test_chatml_unmask_messages_trains_user_and_tool_but_not_system(tok):
    msgs = [{"role": "system", "content": "You are kind."},
            {"role": "user", "content": "What is the weather?"},
            {"role": "assistant", "content": "Let me look."},
            {"role": "tool", "content": "Sunny and warm"},
            {"role": "assistant", "content": "It is sunny."}]
    _, unmasked, runs = trained(tok, msgs, unmask_messages=True)
    assert runs == ["What is the weather?<|im_end|>", "Let me look.<|im_end|>", "Sunny and warm<|im_end|>",
                    "It is sunny.<|im_end|>"]
    assert unmasked == "".join(runs)
    # without the flag only the assistant turns are trained
    _, _, runs = trained(tok, msgs)
    assert runs == ["Let me look.<|im_end|>", "It is sunny.<|im_end|>"]


def test_chatml_reasoning_content_is_trained(tok):
    msgs = [{"role": "user", "content": "What is two plus two?"},
            {"role": "assistant", "reasoning_content": "Two and two make four.", "content": "Four."}]
    _, unmasked, runs = trained(tok, msgs)
    assert unmasked == "<think>\nTwo and two make four.\n</think>\n\nFour.<|im_end|>"
    assert len(runs) == 1


def test_no_assistant_turn_and_no_unmask_trains_nothing(tok):
    t = tokenize_conversation(tok, [{"role": "user", "content": "Hello"}])
    assert t.labels == [IGNORE] * len(t.input_ids)
    assert t.num_loss_tokens == 0


# -- (b) Llama-3 headers, trimmed content ------------------------------------------------------------------

def test_llama3_multi_turn(llama_tok):
    text, unmasked, runs = trained(llama_tok, MULTI_TURN)
    assert text == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are kind.<|eot_id|>"
                    "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\nHello friend<|eot_id|>"
                    "<|start_header_id|>user<|end_header_id|>\n\nAnd more?<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\nYes, more.<|eot_id|>")
    assert unmasked == "Hello friend<|eot_id|>Yes, more.<|eot_id|>"
    assert runs == ["Hello friend<|eot_id|>", "Yes, more.<|eot_id|>"]


def test_llama3_bos_once_and_masked(llama_tok):
    t = tokenize_conversation(llama_tok, MULTI_TURN)
    bos = llama_tok.convert_tokens_to_ids("<|begin_of_text|>")
    assert t.input_ids[0] == bos
    assert t.input_ids.count(bos) == 1
    assert t.labels[0] == IGNORE


def test_llama3_trimmed_content_is_what_is_trained(llama_tok):
    msgs = [{"role": "system", "content": "  Be brief.\n"},
            {"role": "user", "content": "\n Hi there  "},
            {"role": "assistant", "content": "\n  Hello friend  \n"},   # not the last value
            {"role": "user", "content": "Bye "},
            {"role": "assistant", "content": "   Goodbye now.\n\n"}]     # the last value
    text, unmasked, runs = trained(llama_tok, msgs)
    assert "Hello friend<|eot_id|>" in text and "\n  Hello" not in text  # the template did trim
    assert runs == ["Hello friend<|eot_id|>", "Goodbye now.<|eot_id|>"]
    assert unmasked == "Hello friend<|eot_id|>Goodbye now.<|eot_id|>"


def test_llama3_unmask_messages_trims_and_skips_system(llama_tok):
    msgs = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "  Hi there\n"},
            {"role": "assistant", "content": "Hello friend "}]
    _, unmasked, runs = trained(llama_tok, msgs, unmask_messages=True)
    assert runs == ["Hi there<|eot_id|>", "Hello friend<|eot_id|>"]
    assert unmasked == "Hi there<|eot_id|>Hello friend<|eot_id|>"


# -- (c) think blocks ---------------------------------------------------------------------------------------

def test_think_template_trains_the_think_block(think_tok):
    msgs = [{"role": "system", "content": "Think first."},
            {"role": "user", "content": "What is two plus two?"},
            {"role": "assistant", "reasoning_content": "Two and two make four.", "content": "Four."},
            {"role": "user", "content": "Thanks"},
            {"role": "assistant", "content": "You are welcome."}]
    text, unmasked, runs = trained(think_tok, msgs)
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\nYou are welcome.<|im_end|>\n")
    # the think block follows the generation prompt '<|im_start|>assistant\n', so the model generates it,
    # the empty one of the second turn included
    assert runs == ["<think>\nTwo and two make four.\n</think>\n\nFour.<|im_end|>",
                    "<think>\n\n</think>\n\nYou are welcome.<|im_end|>"]
    assert unmasked == "".join(runs)


def test_think_template_unmask_messages(think_tok):
    msgs = [{"role": "system", "content": "Think first."},
            {"role": "user", "content": "Add one and one"},
            {"role": "assistant", "reasoning_content": "One plus one is two.", "content": "Two."}]
    _, _, runs = trained(think_tok, msgs, unmask_messages=True)
    assert runs == ["Add one and one<|im_end|>", "<think>\nOne plus one is two.\n</think>\n\nTwo.<|im_end|>"]


# -- (d) no end-of-turn special token -----------------------------------------------------------------------

def test_template_without_special_tokens_trains_content_but_not_next_turn(plain_tok):
    msgs = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "Hello friend."},
            {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Goodbye now."}]
    text, unmasked, runs = trained(plain_tok, msgs)
    assert text == ("Be brief.\n\n### User:\nHi there\n### Assistant:\nHello friend.\n"
                    "### User:\nBye\n### Assistant:\nGoodbye now.\n")
    assert runs == ["Hello friend.", "Goodbye now."]
    assert unmasked == "Hello friend.Goodbye now."


def test_template_without_special_tokens_unmask_messages(plain_tok):
    msgs = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "Hello friend."}]
    _, _, runs = trained(plain_tok, msgs, unmask_messages=True)
    assert runs == ["Hi there", "Hello friend."]


def test_end_of_turn_search_stops_at_the_next_message(plain_eos_tok):
    msgs = [{"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "Hello friend."},
            {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Goodbye now."}]
    text, _, runs = trained(plain_eos_tok, msgs)
    assert text.endswith("### Assistant:\nGoodbye now.\n<|im_end|>")
    # the first turn must not run on through the next user turn to the final EOS; the last one ends with it
    assert runs == ["Hello friend.", "Goodbye now.\n<|im_end|>"]


# -- tool calls --------------------------------------------------------------------------------------------

def test_tool_call_after_content_is_trained(tools_tok):
    msgs = [{"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": "Checking.",
             "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {}}}]},
            {"role": "tool", "content": "Sunny"},
            {"role": "assistant", "content": "It is sunny."}]
    _, _, runs = trained(tools_tok, msgs)
    assert runs == ["Checking.<tool_call>get_weather</tool_call><|im_end|>", "It is sunny.<|im_end|>"]


def test_tool_call_only_assistant_turn_is_trained(tools_tok):
    # validate_messages accepts empty content when tool_calls is set, so this is a supported sample
    msgs = [{"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": "",
             "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {}}}]},
            {"role": "tool", "content": "Sunny"},
            {"role": "assistant", "content": "It is sunny."}]
    _, _, runs = trained(tools_tok, msgs)
    assert runs == ["<tool_call>get_weather</tool_call><|im_end|>", "It is sunny.<|im_end|>"]


def test_tool_calls_with_unmask_messages(tools_tok):
    msgs = [{"role": "system", "content": "Use tools."},
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": "",
             "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {}}}]},
            {"role": "tool", "content": "Sunny"},
            {"role": "assistant", "content": "It is sunny."}]
    _, unmasked, runs = trained(tools_tok, msgs, unmask_messages=True)
    assert runs == ["Weather?<|im_end|>", "<tool_call>get_weather</tool_call><|im_end|>", "Sunny<|im_end|>",
                    "It is sunny.<|im_end|>"]
    assert unmasked == "".join(runs)


# -- pretraining messages -----------------------------------------------------------------------------------

def test_pretraining_messages_are_a_fully_trained_document(tok):
    t = tokenize_conversation(tok, [{"role": "pretraining", "content": "The cat sat."},
                                    {"role": "pretraining", "content": "It slept."}])
    assert t.labels == t.input_ids
    assert t.input_ids[-1] == tok.eos_token_id
    assert _decode(tok, t.input_ids) == "The cat sat.\nIt slept.<|im_end|>"


# -- tokenizer checks ---------------------------------------------------------------------------------------

def test_check_chat_tokenizer_accepts_tiny(tok):
    assert check_chat_tokenizer(tok) is None


def test_check_chat_tokenizer_without_template(tiny_model_dir):
    t = AutoTokenizer.from_pretrained(tiny_model_dir)
    t.chat_template = None
    with pytest.raises(HoneError) as info:
        check_chat_tokenizer(t)
    assert "no chat template" in str(info.value)
    assert info.value.where == "model_path"


def test_check_chat_tokenizer_requires_fast():
    with pytest.raises(HoneError, match="fast"):
        check_chat_tokenizer(SimpleNamespace(chat_template="{{ messages }}", is_fast=False))
