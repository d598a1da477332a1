"""Tests for tracerl_jax.tokenizers: the shipped task tokenizer, tokenizer.json, batching."""

import importlib.util
import json
import os
import pathlib
import string

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracerl_jax import tasks
from tracerl_jax import tokenizers as tk

ROOT = pathlib.Path(__file__).resolve().parents[1]
QWEN_MATH = ("<|im_start|>user\n{problem}\nPlease reason step by step, and put your final "
             "answer within \\boxed{}.<|im_end|>\n<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def sp():
    return tk.load_tokenizer("tasks")


# --- the shipped SentencePiece task tokenizer --------------------------------------------------

def test_shipped_special_ids(sp):
    assert isinstance(sp, tk.Tokenizer) and isinstance(sp, tk.SentencePieceTokenizer)
    assert (sp.vocab_size, sp.pad_id, sp.eos_id, sp.bos_id, sp.mask_id) == (160, 0, 1, 2, 4)
    assert [sp.id_to_piece(i) for i in range(7)] == [
        "<pad>", "</s>", "<s>", "<unk>", "<mask>", "\\boxed{", "\n"]


def test_digits_operators_and_boxed_are_single_tokens(sp):
    for d in "0123456789":
        assert len(sp.encode(d)) == 1
    # Digits never merge with each other.
    assert len(sp.encode("1234567890")) == 10
    for op in "+-*/()=,.":
        assert len(sp.encode(op)) == 1, op
    assert sp.encode("\\boxed{") == [5] and len(sp.encode("}")) == 1


def _task_texts():
    for name in tasks.task_names():
        for e in tasks.get_task(name).generate("test", 30, seed=11):
            yield from (e.question, e.solution, e.answer)


def test_round_trips_all_task_texts(sp):
    lengths = []
    for text in _task_texts():
        for wrapped in (text, sp.chat_prompt(text)):
            ids = sp.encode(wrapped)
            assert 3 not in ids, wrapped  # no <unk>
            assert sp.decode(ids) == wrapped
        lengths.append(len(sp.encode(text)))
    # Short enough for the CPU examples' tiny models.
    assert max(lengths) <= 48


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=string.printable.replace("\r", "").replace("\x0b", "")
               .replace("\x0c", "").replace("\t", ""), max_size=60))
def test_round_trips_printable_ascii(text):
    tok = tk.load_tokenizer("tasks")
    assert tok.decode(tok.encode(text)) == text


def test_special_strings_and_decode(sp):
    ids = sp.encode("1+1</s><pad><mask><s>")
    assert ids[-4:] == [1, 0, 4, 2]
    assert sp.decode(ids) == "1+1</s><pad><mask><s>"
    assert sp.decode(ids, skip_special_tokens=True) == "1+1"
    assert sp.decode([]) == "" and sp.encode("") == []
    with pytest.raises(ValueError, match="token id 160 is outside"):
        sp.decode([1, 160])
    with pytest.raises(ValueError, match="outside"):
        sp.decode([-1])


def test_task_chat_template(sp):
    assert sp.chat_prompt("Compute 1+2.") == "Q: Compute 1+2.\nA:"
    assert sp.chat_prompt("Compute 1+2.", "math", think=True) == "Q: Compute 1+2.\nA:"
    # The template costs a handful of tokens ("Q", ":", "\n", "A", ":" + a space).
    assert len(sp.encode(sp.chat_prompt(""))) <= 6
    with pytest.raises(ValueError, match="no prompt template for kind 'code_stdio'"):
        sp.chat_prompt("x", "code_stdio")


def _train_script():
    spec = importlib.util.spec_from_file_location("train_tokenizer",
                                                  ROOT / "scripts" / "train_tokenizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_model_is_what_the_script_builds(tmp_path):
    script = _train_script()
    assert script.main(["--out_dir", str(tmp_path)]) == 0
    shipped = ROOT / "tracerl_jax" / "assets" / "tokenizer"
    rebuilt = tk.SentencePieceTokenizer(tmp_path / "tasks.model")
    original = tk.load_tokenizer("tasks")
    # Compare the vocabularies (robust to protobuf serialisation details) and
    # the bytes (what is shipped must be exactly what the script writes).
    assert [rebuilt.id_to_piece(i) for i in range(rebuilt.vocab_size)] == \
        [original.id_to_piece(i) for i in range(original.vocab_size)]
    assert (tmp_path / "tasks.vocab").read_text() == (shipped / "tasks.vocab").read_text()
    assert (tmp_path / "tasks.model").read_bytes() == (shipped / "tasks.model").read_bytes()


def test_sentencepiece_errors(tmp_path):
    with pytest.raises(ValueError, match="SentencePiece model not found"):
        tk.SentencePieceTokenizer(tmp_path / "missing.model")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="cannot load SentencePiece model"):
        tk.SentencePieceTokenizer(bad)
    with pytest.raises(ValueError, match="mask token '<MASK>' is not in the model"):
        tk.load_tokenizer("tasks", mask_token="<MASK>")
    with pytest.raises(ValueError, match="equals the pad id"):
        tk.load_tokenizer("tasks", mask_id=0)
    assert tk.load_tokenizer("tasks", mask_id=3).mask_id == 3


# --- batching -----------------------------------------------------------------------------

def test_encode_batch_left_and_right(sp):
    texts = ["1+2", "", "12+345"]
    ids, valid = sp.encode_batch(texts)
    assert ids.dtype == np.int32 and valid.dtype == bool and ids.shape == (3, 6)
    for row, text in enumerate(texts):
        n = len(sp.encode(text))
        assert valid[row].sum() == n and valid[row, 6 - n:].all()  # left padded
        assert ids[row, 6 - n:].tolist() == sp.encode(text)
        assert (ids[row, :6 - n] == sp.pad_id).all()
    r_ids, r_valid = tk.encode_batch(sp, texts, side="right", multiple_of=4)
    assert r_ids.shape == (3, 8) and r_valid[2, :6].all() and not r_valid[2, 6:].any()
    f_ids, _ = tk.encode_batch(sp, texts, length=10)
    assert f_ids.shape == (3, 10)
    with pytest.raises(ValueError, match="row 2 has 6 tokens, more than length=5"):
        tk.encode_batch(sp, texts, length=5)
    with pytest.raises(ValueError, match="side must be"):
        tk.encode_batch(sp, texts, side="middle")
    with pytest.raises(ValueError, match="multiple_of"):
        tk.pad_ids([[1]], 0, multiple_of=0)
    empty_ids, empty_valid = tk.pad_ids([], 0)
    assert empty_ids.shape == (0, 0) and empty_valid.shape == (0, 0)


# --- tokenizer.json (HFTokenizer) ------------------------------------------------------------

QWEN_SPECIALS = (["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
                 + [f"<|reserved_{i}|>" for i in range(23)] + ["<|MASK|>"])


def _small_bpe(directory, specials=QWEN_SPECIALS, config=None, special_map=None):
    """A byte-level BPE trained on a few sentences, with Qwen-named added tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["Compute 12+34.", "Please reason step by step.",
                             "put your final answer within \\boxed{}", "user assistant"], trainer)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    os.makedirs(directory, exist_ok=True)
    tok.save(os.path.join(directory, "tokenizer.json"))
    if config is not None:
        with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
            json.dump(config, f)
    if special_map is not None:
        with open(os.path.join(directory, "special_tokens_map.json"), "w") as f:
            json.dump(special_map, f)
    return tok


def test_hf_ids_from_names_and_config(tmp_path):
    raw = _small_bpe(tmp_path, config={"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                                       "bos_token": None})
    tok = tk.load_tokenizer(tmp_path)
    assert isinstance(tok, tk.HFTokenizer) and isinstance(tok, tk.Tokenizer)
    assert tok.pad_id == raw.token_to_id("<|endoftext|>")
    assert tok.eos_id == raw.token_to_id("<|im_end|>")
    assert tok.mask_id == raw.token_to_id("<|MASK|>")
    assert tok.bos_id is None
    assert tok.vocab_size == raw.get_vocab_size(with_added_tokens=True)
    assert tk.load_tokenizer(tmp_path / "tokenizer.json").mask_id == tok.mask_id


def test_hf_chat_template_and_round_trip(tmp_path):
    _small_bpe(tmp_path)
    tok = tk.HFTokenizer(tmp_path)
    prompt = tok.chat_prompt("Compute 12+34.")
    assert prompt == QWEN_MATH.replace("{problem}", "Compute 12+34.")
    ids = tok.encode(prompt)
    # Added tokens in the text map to their ids; nothing else is added.
    assert ids[0] == tok.encode("<|im_start|>")[0] and tok.eos_id in ids
    assert tok.decode(ids) == prompt
    assert tok.decode(ids, skip_special_tokens=True) == prompt.replace(
        "<|im_start|>", "").replace("<|im_end|>", "")
    with pytest.raises(ValueError, match="outside"):
        tok.decode([tok.vocab_size])
    batch, valid = tok.encode_batch([prompt, "12"])
    assert batch.shape == (2, len(ids)) and batch[1, 0] == tok.pad_id and valid[0].all()


def test_hf_other_templates(tmp_path):
    _small_bpe(tmp_path)
    tok = tk.HFTokenizer(tmp_path)
    think = tok.chat_prompt("P", think=True)
    assert think == ("<|im_start|>user\nYou need to put your final answer in \\boxed{}. "
                     "This is the problem:\nP<|im_end|>\n<|im_start|>assistant<think>\n")
    func = tok.chat_prompt("P", "code_function", prefix="def f(x):\n")
    assert func.endswith("<|im_start|>assistant\ndef f(x):\n") and "Place your code" in func
    assert tok.chat_prompt("P", "code_function", think=True) == tok.chat_prompt(
        "P", "code_function")  # the reference has no think variant here
    assert tok.chat_prompt("P", "code_stdio", think=True).endswith("assistant<think>\n")
    # Braces in a question are kept verbatim (no str.format).
    assert "{x}" in tok.chat_prompt("{x} {problem}")


def test_trado_ids(tmp_path):
    """A vocabulary as large as Qwen's puts the added tokens at TraDo's ids."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    vocab = {"[UNK]": 0, "Compute": 1}
    vocab.update({f"w{i}": i for i in range(2, 151643)})
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    raw.add_special_tokens([AddedToken(s, special=True, normalized=False)
                            for s in QWEN_SPECIALS])
    raw.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
         "added_tokens_decoder": {"151669": {"content": "<|MASK|>", "special": True}}}))
    tok = tk.load_tokenizer(tmp_path)
    assert (tok.pad_id, tok.eos_id, tok.mask_id) == (151643, 151645, 151669)
    assert tok.vocab_size == 151670


def test_hf_special_tokens_map_precedence_and_overrides(tmp_path):
    raw = _small_bpe(tmp_path, specials=["<|endoftext|>", "<|im_end|>", "<m1>", "<m2>", "<s>"],
                     config={"mask_token": "<m1>", "eos_token": "<|endoftext|>"},
                     special_map={"mask_token": {"content": "<m2>"}, "bos_token": "<s>"})
    tok = tk.HFTokenizer(tmp_path)
    assert tok.mask_id == raw.token_to_id("<m2>")  # special_tokens_map.json wins
    assert tok.eos_id == raw.token_to_id("<|endoftext|>") == tok.pad_id
    assert tok.bos_id == raw.token_to_id("<s>")
    over = tk.HFTokenizer(tmp_path, mask_id=raw.token_to_id("<m1>"), eos_id=3, pad_id=4,
                          bos_id=5)
    assert (over.mask_id, over.eos_id, over.pad_id, over.bos_id) == (
        raw.token_to_id("<m1>"), 3, 4, 5)


def test_hf_missing_mask_never_falls_back_to_pad(tmp_path):
    _small_bpe(tmp_path, specials=["<|endoftext|>", "<|im_end|>"])
    with pytest.raises(ValueError, match="cannot determine the mask token id.*mask_id="):
        tk.HFTokenizer(tmp_path)
    with pytest.raises(ValueError, match="equals the pad id"):
        tk.HFTokenizer(tmp_path, mask_id=tk.HFTokenizer(tmp_path, mask_id=7).pad_id)
    assert tk.HFTokenizer(tmp_path, mask_id=7).mask_id == 7
    with pytest.raises(ValueError, match="outside"):
        tk.HFTokenizer(tmp_path, mask_id=10**6)


def test_hf_config_errors(tmp_path):
    _small_bpe(tmp_path, config={"mask_token": "<|nope|>"})
    with pytest.raises(ValueError, match="mask token '<|nope|>' named in the config"):
        tk.HFTokenizer(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("{")
    with pytest.raises(ValueError, match="tokenizer_config.json: malformed JSON"):
        tk.HFTokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(ValueError, match="cannot load"):
        tk.HFTokenizer(tmp_path / "tokenizer.json")


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(ValueError, match="no tokenizer at"):
        tk.load_tokenizer(tmp_path / "nothing")
    with pytest.raises(ValueError, match="expected tokenizer.json or one"):
        tk.load_tokenizer(tmp_path)
    shipped = ROOT / "tracerl_jax" / "assets" / "tokenizer" / "tasks.model"
    (tmp_path / "tokenizer.model").write_bytes(shipped.read_bytes())
    assert tk.load_tokenizer(tmp_path).vocab_size == 160
    assert tk.load_tokenizer(shipped).vocab_size == 160
    with pytest.raises(ValueError, match="tokenizer.json not found"):
        tk.HFTokenizer(tmp_path / "missing.json")
