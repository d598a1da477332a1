"""Tokenizers behind one small protocol: SentencePiece and ``tokenizer.json``.

Every part of the library that turns text into ids (samplers, trainers,
examples) talks to a :class:`Tokenizer`. Two implementations ship:

* :class:`SentencePieceTokenizer` for ``.model`` files, including the tiny
  tokenizer of the built-in tasks (``load_tokenizer("tasks")``).
* :class:`HFTokenizer` for Hugging Face ``tokenizer.json`` checkpoints such
  as TraDo/SDAR's Qwen tokenizer, read with the ``tokenizers`` library.

Special tokens are never guessed silently: the mask id in particular must be
found in the tokenizer or given explicitly, and is never the pad id (the
reference engine falls back to PAD, quirk Q-S5 of docs/algorithms.md).

The shipped task tokenizer (``assets/tokenizer/tasks.model``, built by
``scripts/train_tokenizer.py``) has 160 ids: ``<pad>`` 0, ``</s>`` 1 (eos),
``<s>`` 2 (bos), ``<unk>`` 3, ``<mask>`` 4, then ``\\boxed{`` and ``\\n`` as
single pieces, every printable ASCII character, and BPE merges. Digits are
always single tokens.
"""
from __future__ import annotations

import importlib.resources
import json
import os
import re
from typing import Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

# docs/algorithms.md §1.9 (the reference's rollout templates; `{problem}` is the
# question). Function-call code prompts get the task's `prefix` appended.
QWEN_TEMPLATES: Mapping[str, str] = {
    "math": ("<|im_start|>user\n{problem}\nPlease reason step by step, and put"
             " your final answer within \\boxed{}.<|im_end|>\n"
             "<|im_start|>assistant\n"),
    "math_think": ("<|im_start|>user\nYou need to put your final answer in "
                   "\\boxed{}. This is the problem:\n{problem}<|im_end|>\n"
                   "<|im_start|>assistant<think>\n"),
    "code_function": ("<|im_start|>user\n{problem}\nPlace your code within a "
                      "single Python code block ```python ```. Do not include "
                      "more than one code block. <|im_end|>\n"
                      "<|im_start|>assistant\n"),
    "code_stdio": ("<|im_start|>user\nThis is the problem:\n{problem}\nYou "
                   "should put your code in ```python ```. Use input() to read"
                   " input and print() to produce output in your script. "
                   "<|im_end|>\n<|im_start|>assistant\n"),
    "code_stdio_think": ("<|im_start|>user\nThis is the problem:\n{problem}\n"
                         "You should put your code in ```python ```. Use "
                         "input() to read input and print() to produce output "
                         "in your script. <|im_end|>\n"
                         "<|im_start|>assistant<think>\n"),
}

# The tiny task models have a context of a few dozen tokens, so their prompt
# is just a question marker and an answer marker (about 5 tokens).
TASKS_TEMPLATES: Mapping[str, str] = {"math": "Q: {problem}\nA:"}

# Names under which checkpoints spell their mask token, most specific first:
# TraDo/SDAR, Dream, LLaDA, BERT-style.
_MASK_NAMES = ("<|MASK|>", "<|mask|>", "<|mdm_mask|>", "[MASK]", "<mask>")
_PAD_NAMES = ("<|endoftext|>", "<pad>", "[PAD]")
_EOS_NAMES = ("<|im_end|>", "<|endoftext|>", "</s>", "<eos>")


@runtime_checkable
class Tokenizer(Protocol):
    """What the library needs from a tokenizer.

    Attributes:
      vocab_size: size of the id space (1 + the largest id, special tokens
        included); a model's embedding must have at least this many rows.
      pad_id: id used for padding.
      eos_id: id that ends a response.
      mask_id: the diffusion ``MASK`` id; never equal to ``pad_id``.
      bos_id: beginning-of-sequence id, or None if the tokenizer has none.
    """

    vocab_size: int
    pad_id: int
    eos_id: int
    mask_id: int
    bos_id: int | None

    def encode(self, text: str) -> list[int]:
        """Returns the ids of ``text``; no special tokens are added, but special
        token strings inside the text map to their ids."""

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Returns the text of ``ids``; special tokens appear as their strings
        unless ``skip_special_tokens``."""

    def chat_prompt(self, question: str, kind: str = "math", *,
                    think: bool = False, prefix: str = "") -> str:
        """Wraps a question in the prompt template of ``kind``."""


def render_prompt(templates: Mapping[str, str], question: str, kind: str,
                  think: bool = False, prefix: str = "") -> str:
    """Fills a prompt template (shared by both tokenizers).

    Args:
      templates: kind -> template with a ``{problem}`` placeholder; a
        ``"<kind>_think"`` entry, where present, is used when ``think``.
      question: the problem text, inserted verbatim.
      kind: ``"math"``, ``"code_function"`` or ``"code_stdio"`` (what
        ``Example.meta["kind"]`` holds).
      think: use the ``start_with_think`` variant; kinds without one (the
        reference has none for ``code_function``) keep their template.
      prefix: text appended after the template (the function signature of
        ``code_function`` tasks, §1.9).

    Returns:
      The prompt text.

    Raises:
      ValueError: if ``kind`` has no template.
    """
    if kind not in templates:
        raise ValueError(f"no prompt template for kind {kind!r}; this tokenizer "
                         f"has {sorted(k for k in templates if not k.endswith('_think'))}")
    template = templates.get(f"{kind}_think", templates[kind]) if think else templates[kind]
    # Plain replacement, not str.format: templates contain literal braces.
    return template.replace("{problem}", question) + prefix


def pad_ids(seqs: Sequence[Sequence[int]], pad_id: int, *, side: str = "left",
            length: int | None = None,
            multiple_of: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Pads id lists into one array.

    Args:
      seqs: B id sequences.
      pad_id: the id written into padding.
      side: ``"left"`` (prompts, so every prompt ends at the same column) or
        ``"right"`` (responses).
      length: the padded length L; default the longest sequence.
      multiple_of: round L up to a multiple of this (bucketing keeps the number
        of compiled shapes small).

    Returns:
      ``(ids [B, L] int32, valid [B, L] bool)``; ``valid`` is False on padding.

    Raises:
      ValueError: for a bad side or multiple, or a sequence longer than
        ``length`` (the message names its row).
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    if isinstance(multiple_of, bool) or not isinstance(multiple_of, int) or multiple_of < 1:
        raise ValueError(f"multiple_of must be an int >= 1, got {multiple_of!r}")
    longest = max((len(s) for s in seqs), default=0)
    if length is None:
        length = longest
    elif length < longest:
        row = max(range(len(seqs)), key=lambda i: len(seqs[i]))
        raise ValueError(f"row {row} has {len(seqs[row])} tokens, more than "
                         f"length={length}")
    length = -(-length // multiple_of) * multiple_of
    ids = np.full((len(seqs), length), pad_id, dtype=np.int32)
    valid = np.zeros((len(seqs), length), dtype=bool)
    for i, seq in enumerate(seqs):
        n = len(seq)
        if n:
            cols = slice(length - n, length) if side == "left" else slice(0, n)
            ids[i, cols] = seq
            valid[i, cols] = True
    return ids, valid


def encode_batch(tokenizer: Tokenizer, texts: Sequence[str], *,
                 side: str = "left", length: int | None = None,
                 multiple_of: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Encodes texts and pads them with the tokenizer's pad id.

    Args:
      tokenizer: any :class:`Tokenizer`.
      texts: B strings (e.g. ``chat_prompt`` outputs).
      side: ``"left"`` or ``"right"`` padding.
      length: padded length L (default: the longest encoding).
      multiple_of: round L up to a multiple of this.

    Returns:
      ``(ids [B, L] int32, valid [B, L] bool)``.

    Raises:
      ValueError: as ``pad_ids``.
    """
    return pad_ids([tokenizer.encode(t) for t in texts], tokenizer.pad_id,
                   side=side, length=length, multiple_of=multiple_of)


def _check_ids(ids: Sequence[int], vocab_size: int) -> list[int]:
    """Returns ``ids`` as ints, or raises ValueError naming an id out of range."""
    out = [int(i) for i in ids]
    for i in out:
        if not 0 <= i < vocab_size:
            raise ValueError(f"token id {i} is outside [0, {vocab_size})")
    return out


class _Batching:
    """Adds ``encode_batch`` as a method."""

    def encode_batch(self, texts: Sequence[str], *, side: str = "left",
                     length: int | None = None,
                     multiple_of: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """See the module-level :func:`encode_batch`."""
        return encode_batch(self, texts, side=side, length=length,
                            multiple_of=multiple_of)


class SentencePieceTokenizer(_Batching):
    """A SentencePiece model behind the :class:`Tokenizer` protocol."""

    def __init__(self, model: str | os.PathLike | bytes, *,
                 mask_token: str = "<mask>", mask_id: int | None = None,
                 templates: Mapping[str, str] = TASKS_TEMPLATES):
        """Loads a ``.model`` file (or its bytes).

        Args:
          model: path to the model file, or the serialized model.
          mask_token: the piece that is the mask token.
          mask_id: explicit mask id (overrides ``mask_token``).
          templates: prompt templates for ``chat_prompt``; the default is the
            short task template ``"Q: {problem}\\nA:"``.

        Raises:
          ValueError: if the file is missing or unreadable, the model has no pad
            or eos id, or the mask cannot be found or equals the pad id.
        """
        import sentencepiece as spm  # pylint: disable=g-import-not-at-top

        self._sp = spm.SentencePieceProcessor()
        try:
            if isinstance(model, bytes):
                self._sp.LoadFromSerializedProto(model)
            else:
                if not os.path.isfile(model):
                    raise ValueError(f"SentencePiece model not found: {model}")
                self._sp.Load(os.fspath(model))
        except (OSError, RuntimeError) as e:
            raise ValueError(f"cannot load SentencePiece model {model!r:.80}: {e}") from e
        self.vocab_size = self._sp.get_piece_size()
        self.pad_id = self._sp.pad_id()
        self.eos_id = self._sp.eos_id()
        bos = self._sp.bos_id()
        self.bos_id = bos if bos >= 0 else None
        if self.pad_id < 0 or self.eos_id < 0:
            raise ValueError("SentencePiece model needs pad and eos ids (train it "
                             "with pad_id >= 0 and eos_id >= 0)")
        if mask_id is None:
            found = self._sp.piece_to_id(mask_token)
            # piece_to_id answers the unk id for unknown pieces.
            if found == self._sp.unk_id() and mask_token != self._sp.id_to_piece(found):
                raise ValueError(f"mask token {mask_token!r} is not in the model; "
                                 "pass mask_id= or mask_token=")
            mask_id = found
        _check_ids([mask_id], self.vocab_size)
        if mask_id == self.pad_id:
            raise ValueError(f"mask id {mask_id} equals the pad id (quirk Q-S5)")
        self.mask_id = int(mask_id)
        self._templates = dict(templates)
        special = [self.pad_id, self.eos_id, self.mask_id]
        if self.bos_id is not None:
            special.append(self.bos_id)
        self._special = {i: self._sp.id_to_piece(i) for i in special}
        by_text = {p: i for i, p in self._special.items()}
        self._special_ids = by_text
        self._split = re.compile(
            "(" + "|".join(re.escape(p) for p in sorted(by_text, key=len, reverse=True)) + ")")

    def encode(self, text: str) -> list[int]:
        """Returns the ids of ``text`` (special token strings become their ids).

        Args:
          text: any string.

        Returns:
          Ids, with no BOS/EOS added.
        """
        ids: list[int] = []
        # SentencePiece treats control pieces (pad, eos, bos) as plain text, so
        # they are cut out first, as HF tokenizers do with added tokens.
        for k, part in enumerate(self._split.split(text)):
            if k % 2:
                ids.append(self._special_ids[part])
            elif part:
                ids.extend(self._sp.encode(part, out_type=int))
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Returns the text of ``ids``.

        Args:
          ids: token ids in ``[0, vocab_size)``.
          skip_special_tokens: drop pad/eos/bos/mask instead of writing their
            strings.

        Returns:
          The text.

        Raises:
          ValueError: for an id outside the vocabulary.
        """
        out, run = [], []
        for i in _check_ids(ids, self.vocab_size):
            if i in self._special:
                if run:
                    out.append(self._sp.decode(run))
                    run = []
                if not skip_special_tokens:
                    out.append(self._special[i])
            else:
                run.append(i)
        if run:
            out.append(self._sp.decode(run))
        return "".join(out)

    def chat_prompt(self, question: str, kind: str = "math", *,
                    think: bool = False, prefix: str = "") -> str:
        """Wraps a question in this tokenizer's template (see ``render_prompt``)."""
        return render_prompt(self._templates, question, kind, think, prefix)

    def id_to_piece(self, i: int) -> str:
        """Returns the piece string of an id (for inspection and tests)."""
        return self._sp.id_to_piece(_check_ids([i], self.vocab_size)[0])


def _config_token(configs: Sequence[Mapping], key: str) -> str | None:
    """Returns the content of a special token named in HF config files."""
    for cfg in configs:
        value = cfg.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str) and value:
            return value
    return None


class HFTokenizer(_Batching):
    """A Hugging Face ``tokenizer.json`` behind the :class:`Tokenizer` protocol."""

    def __init__(self, path: str | os.PathLike, *, pad_id: int | None = None,
                 eos_id: int | None = None, mask_id: int | None = None,
                 bos_id: int | None = None,
                 templates: Mapping[str, str] = QWEN_TEMPLATES):
        """Loads ``tokenizer.json`` and resolves the special ids.

        Each id comes from, in order: the explicit argument;
        ``special_tokens_map.json``; ``tokenizer_config.json`` (both read from
        the same directory when present); the well-known token names of
        Qwen/TraDo, Dream and LLaDA among the tokenizer's tokens. For TraDo that
        gives ``<|endoftext|>`` = 151643 (pad), ``<|im_end|>`` = 151645 (eos, if
        the config says so) and ``<|MASK|>`` = 151669.

        Args:
          path: ``tokenizer.json`` or the directory holding it.
          pad_id: explicit pad id.
          eos_id: explicit eos id.
          mask_id: explicit mask id.
          bos_id: explicit bos id (otherwise only from the config files).
          templates: prompt templates; default the reference's (§1.9).

        Raises:
          ValueError: if the file is missing or unreadable, or pad, eos or mask
            cannot be determined, or the mask id equals the pad id (Q-S5).
        """
        import tokenizers  # pylint: disable=g-import-not-at-top

        path = os.fspath(path)
        directory = path if os.path.isdir(path) else os.path.dirname(path)
        json_path = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
        if not os.path.isfile(json_path):
            raise ValueError(f"tokenizer.json not found: {json_path}")
        try:
            self._tok = tokenizers.Tokenizer.from_file(json_path)
        except Exception as e:  # the Rust side raises bare Exception subclasses
            raise ValueError(f"cannot load {json_path}: {e}") from e
        configs = []
        for name in ("special_tokens_map.json", "tokenizer_config.json"):
            file = os.path.join(directory, name)
            if os.path.isfile(file):
                try:
                    with open(file, encoding="utf-8") as f:
                        configs.append(json.load(f))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{file}: malformed JSON: {e}") from e
        # Tokens declared only in tokenizer_config.json's added_tokens_decoder.
        self._declared = {}
        for cfg in configs:
            for i, tok in (cfg.get("added_tokens_decoder") or {}).items():
                if isinstance(tok, dict) and isinstance(tok.get("content"), str):
                    self._declared[tok["content"]] = int(i)
        vocab = self._tok.get_vocab(with_added_tokens=True)
        self.vocab_size = max(max(vocab.values(), default=-1),
                              max(self._declared.values(), default=-1)) + 1
        self._source = json_path

        self.pad_id = self._resolve("pad", pad_id, configs, "pad_token", _PAD_NAMES)
        self.eos_id = self._resolve("eos", eos_id, configs, "eos_token", _EOS_NAMES)
        self.mask_id = self._resolve("mask", mask_id, configs, "mask_token", _MASK_NAMES)
        if self.mask_id == self.pad_id:
            raise ValueError(f"{json_path}: mask id {self.mask_id} equals the pad id;"
                             " the mask must be its own token (quirk Q-S5)")
        if bos_id is None:
            name = _config_token(configs, "bos_token")
            bos_id = None if name is None else self._lookup(name, "bos")
        self.bos_id = None if bos_id is None else _check_ids([bos_id], self.vocab_size)[0]
        self._templates = dict(templates)

    def _lookup(self, content: str, role: str) -> int:
        """Returns the id of a token string, or raises ValueError naming it."""
        i = self._tok.token_to_id(content)
        if i is None:
            i = self._declared.get(content)
        if i is None:
            raise ValueError(f"{self._source}: {role} token {content!r} named in the "
                             "config is not in the vocabulary")
        return i

    def _resolve(self, role: str, explicit: int | None, configs, key: str,
                 names: Sequence[str]) -> int:
        """Finds one special id (see ``__init__`` for the order)."""
        if explicit is not None:
            return _check_ids([explicit], self.vocab_size)[0]
        content = _config_token(configs, key)
        if content is not None:
            return self._lookup(content, role)
        for name in names:
            i = self._tok.token_to_id(name)
            if i is None:
                i = self._declared.get(name)
            if i is not None:
                return i
        raise ValueError(
            f"{self._source}: cannot determine the {role} token id (no {key} in "
            f"special_tokens_map.json/tokenizer_config.json and none of "
            f"{list(names)} in the vocabulary); pass {role}_id= explicitly")

    def encode(self, text: str) -> list[int]:
        """Returns the ids of ``text`` without adding special tokens.

        Args:
          text: any string; added tokens written in it (``<|im_start|>``) map to
            their ids.

        Returns:
          The ids.
        """
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Returns the text of ``ids``.

        Args:
          ids: token ids in ``[0, vocab_size)``.
          skip_special_tokens: drop tokens flagged special in ``tokenizer.json``.

        Returns:
          The text.

        Raises:
          ValueError: for an id outside the vocabulary.
        """
        return self._tok.decode(_check_ids(ids, self.vocab_size),
                                skip_special_tokens=skip_special_tokens)

    def chat_prompt(self, question: str, kind: str = "math", *,
                    think: bool = False, prefix: str = "") -> str:
        """Wraps a question in the reference template of ``kind`` (§1.9)."""
        return render_prompt(self._templates, question, kind, think, prefix)


def load_tokenizer(path_or_name: str | os.PathLike = "tasks", **kwargs) -> Tokenizer:
    """Loads a tokenizer by name or path.

    Args:
      path_or_name: ``"tasks"`` (the shipped task tokenizer), a SentencePiece
        ``.model`` file, a ``tokenizer.json`` file, or a directory holding
        ``tokenizer.json`` (preferred) or a single ``*.model``.
      **kwargs: passed to the tokenizer class (e.g. ``mask_id=`` overrides).

    Returns:
      The tokenizer.

    Raises:
      ValueError: if nothing loadable is found there.
    """
    if path_or_name == "tasks":
        resource = (importlib.resources.files("tracerl_jax") / "assets" /
                    "tokenizer" / "tasks.model")
        return SentencePieceTokenizer(resource.read_bytes(), **kwargs)
    path = os.fspath(path_or_name)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "tokenizer.json")):
            return HFTokenizer(path, **kwargs)
        models = sorted(f for f in os.listdir(path) if f.endswith(".model"))
        if len(models) == 1:
            return SentencePieceTokenizer(os.path.join(path, models[0]), **kwargs)
        raise ValueError(f"{path}: expected tokenizer.json or one *.model file, "
                         f"found {models or 'neither'}")
    if not os.path.isfile(path):
        raise ValueError(f"no tokenizer at {path!r} (and it is not the name "
                         "'tasks')")
    if path.endswith(".json"):
        return HFTokenizer(path, **kwargs)
    return SentencePieceTokenizer(path, **kwargs)
