"""Trains the shipped SentencePiece tokenizer of the built-in tasks.

Reproducible: the corpus comes from the seeded task generators, training is
single-threaded BPE over the sentences in a fixed order, and the output is a
pure function of this file (tests/test_tokenizers.py retrains and
compares with the shipped model).

Usage:
  python scripts/train_tokenizer.py [--out_dir tracerl_jax/assets/tokenizer]

Writes ``tasks.model`` and ``tasks.vocab`` (one ``piece<TAB>score`` line per
id; the newline piece is written as ``\\n``).

Choices: digits are always single tokens (``split_digits``) so numbers are
read digit by digit; every printable ASCII character is in the vocabulary so
any ASCII text round-trips; ``\\boxed{`` and the newline are single pieces;
no normalisation, no dummy prefix and no whitespace collapsing, so
``decode(encode(text)) == text``. 160 ids: 4 specials, 3 user-defined
pieces (``<mask>``, ``\\boxed{``, newline), 95 characters (the 94 printable
non-space ASCII ones and ``▁`` for space) and 58 merges; the corpus only
supports about 220 ids, and merges past 160 no longer shorten its texts.
"""
from __future__ import annotations

import argparse
import io
import os
import string
import sys

import sentencepiece as spm

from tracerl_jax.tasks import get_task
from tracerl_jax.tokenizers import TASKS_TEMPLATES, render_prompt

VOCAB_SIZE = 160
# Special ids (documented in tracerl_jax/tokenizers.py).
PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3
USER_SYMBOLS = ("<mask>", "\\boxed{", "\n")  # ids 4, 5, 6
# Knob settings whose texts make up the corpus; 200 training problems each.
CORPUS = (
    [("arithmetic", dict(digits=d, operands=n)) for d in (1, 2, 3) for n in (2, 3, 4)]
    + [("sudoku4", dict(blanks=b)) for b in (4, 8, 12)]
    + [("countdown", dict(count=c)) for c in (2, 3, 4)])
PER_SETTING = 200
SEED = 0


def corpus() -> list[str]:
    """Returns the training sentences: templated prompts and solutions.

    Returns:
      Two sentences per generated training problem, in a fixed order.
    """
    texts = []
    for name, knobs in CORPUS:
        for ex in get_task(name, **knobs).generate("train", PER_SETTING, SEED):
            texts.append(render_prompt(TASKS_TEMPLATES, ex.question, "math"))
            texts.append(ex.solution)
    return texts


def train(texts: list[str]) -> bytes:
    """Trains the model on ``texts``.

    Args:
      texts: sentences.

    Returns:
      The serialized SentencePiece model.
    """
    required = "".join(c for c in string.printable if c not in string.whitespace)
    out = io.BytesIO()
    spm.set_random_generator_seed(SEED)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=out,
        model_type="bpe", vocab_size=VOCAB_SIZE, character_coverage=1.0,
        required_chars=required, split_digits=True, byte_fallback=False,
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        pad_id=PAD_ID, eos_id=EOS_ID, bos_id=BOS_ID, unk_id=UNK_ID,
        pad_piece="<pad>", eos_piece="</s>", bos_piece="<s>",
        unk_piece="<unk>", user_defined_symbols=list(USER_SYMBOLS),
        num_threads=1, shuffle_input_sentence=False, input_sentence_size=0,
        minloglevel=2)
    return out.getvalue()


def vocab_lines(model: bytes) -> list[str]:
    """Returns the human-readable ``piece<TAB>score`` lines of a model."""
    sp = spm.SentencePieceProcessor(model_proto=model)
    pieces = [sp.id_to_piece(i).replace("\n", "\\n")
              for i in range(sp.get_piece_size())]
    return [f"{p}\t{sp.get_score(i):g}" for i, p in enumerate(pieces)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out_dir", default=os.path.join(
        os.path.dirname(__file__), "..", "tracerl_jax", "assets", "tokenizer"))
    args = parser.parse_args(argv)
    model = train(corpus())
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "tasks.model"), "wb") as f:
        f.write(model)
    with open(os.path.join(args.out_dir, "tasks.vocab"), "w", encoding="utf-8") as f:
        f.write("\n".join(vocab_lines(model)) + "\n")
    print(f"wrote {os.path.abspath(args.out_dir)}/tasks.model "
          f"({VOCAB_SIZE} pieces, {len(model)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
