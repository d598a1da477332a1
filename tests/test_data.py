"""Bucketing, prompt/SFT-pair encoding and the resumable, shardable example iterator."""

import json

import numpy as np
import pytest

from tracerl_jax.data import (ExampleIterator, SFTPairs, bucket_length, encode_prompts, encode_sft_pairs,
                              padded_batches)
from tracerl_jax.tokenizers import load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tasks")


# ---------------------------------------------------------------------------
# bucket_length
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("n, buckets, multiple, expected", [
    (0, None, 4, 4),        # an empty batch still has a valid shape
    (1, None, 4, 4),
    (4, None, 4, 4),
    (5, None, 4, 8),
    (7, None, 1, 7),
    (5, (16, 8, 64), 1, 8),  # smallest bucket >= n, whatever the order given
    (8, (8, 16), 4, 8),
    (9, (8, 16), 4, 16),
    (np.int64(3), None, 2, 4),
])
def test_bucket_length(n, buckets, multiple, expected):
    assert bucket_length(n, buckets, multiple=multiple) == expected


@pytest.mark.parametrize("n, buckets, multiple, message", [
    (-1, None, 1, r"n must be an int >= 0, got -1"),
    (True, None, 1, r"n must be an int >= 0, got True"),
    (2.5, None, 1, r"n must be an int >= 0, got 2.5"),
    (3, None, 0, r"multiple must be an int >= 1, got 0"),
    (17, (8, 16), 1, r"length 17 exceeds the largest bucket 16"),
    (3, (0, 8), 1, r"buckets must be positive"),
])
def test_bucket_length_bad_input(n, buckets, multiple, message):
    with pytest.raises(ValueError, match=message):
        bucket_length(n, buckets, multiple=multiple)


# ---------------------------------------------------------------------------
# encode_prompts
# ---------------------------------------------------------------------------


def test_encode_prompts_left_pads_to_a_block_multiple(tok):
    texts = ["1+2", "What is 3+4?", "12+7=?"]
    seqs = [tok.encode(t) for t in texts]
    ids, valid = encode_prompts(tok, texts, block_size=4)
    assert ids.shape == valid.shape == (3, 12) and ids.dtype == np.int32 and valid.dtype == bool
    for row, s in enumerate(seqs):
        L = ids.shape[1]
        np.testing.assert_array_equal(ids[row, L - len(s):], s)  # every prompt ends at the last column
        assert (ids[row, :L - len(s)] == tok.pad_id).all()
        np.testing.assert_array_equal(valid[row], np.arange(L) >= L - len(s))


def test_encode_prompts_buckets_and_forced_length(tok):
    ids, _ = encode_prompts(tok, ["1+2"], block_size=4, buckets=(8, 16))
    assert ids.shape == (1, 8)
    ids, _ = encode_prompts(tok, ["What is 3+4?"], block_size=4, buckets=(8, 16))
    assert ids.shape == (1, 16)
    ids, valid = encode_prompts(tok, ["1+2"], block_size=4, buckets=(8, 16), length=20)
    assert ids.shape == (1, 20) and valid.sum() == 3


def test_encode_prompts_bad_input(tok):
    with pytest.raises(ValueError, match=r"buckets must be multiples of block_size=4, got \[6\]"):
        encode_prompts(tok, ["1+2"], block_size=4, buckets=(6, 8))
    with pytest.raises(ValueError, match=r"length 10 must be a multiple of block_size=4"):
        encode_prompts(tok, ["1+2"], block_size=4, length=10)
    with pytest.raises(ValueError, match=r"prompt 1 encodes to no tokens"):
        encode_prompts(tok, ["1+2", ""], block_size=4)
    with pytest.raises(ValueError, match=r"exceeds the largest bucket 8"):
        encode_prompts(tok, ["What is 3+4?"], block_size=4, buckets=(8,))
    with pytest.raises(ValueError, match=r"block_size must be an int >= 1, got 0"):
        encode_prompts(tok, ["1+2"], block_size=0, buckets=(8,))


# ---------------------------------------------------------------------------
# encode_sft_pairs
# ---------------------------------------------------------------------------


class _CharTokenizer:
    """One id per character (``a`` -> 10, ...), ``$`` -> EOS: responses with an explicit EOS."""

    pad_id, eos_id = 0, 1

    def encode(self, text):
        return [self.eos_id if c == "$" else ord(c) - ord("a") + 10 for c in text]


def test_encode_sft_pairs_layout(tok):
    prompts = ["Q: 1+2\nA:", "Q: 12+7\nA:"]
    responses = ["\\boxed{3}", "12+7=19 \\boxed{19}"]
    pairs = encode_sft_pairs(tok, prompts, responses, block_size=4)
    assert isinstance(pairs, SFTPairs)
    N, L0 = pairs.prompt_ids.shape
    L1 = pairs.response_ids.shape[1]
    assert N == 2 and L0 % 4 == 0 and L1 % 4 == 0
    for i, (p, r) in enumerate(zip(prompts, responses)):
        pi, ri = tok.encode(p), tok.encode(r) + [tok.eos_id]
        np.testing.assert_array_equal(pairs.prompt_ids[i, L0 - len(pi):], pi)
        assert pairs.prompt_valid[i].sum() == len(pi)
        assert pairs.response_lengths[i] == len(ri)
        np.testing.assert_array_equal(pairs.response_ids[i, :len(ri)], ri)  # ends with EOS
        assert (pairs.response_ids[i, len(ri):] == tok.pad_id).all()
    np.testing.assert_array_equal(pairs.kept, [0, 1])
    assert L1 == -(-max(pairs.response_lengths) // 4) * 4
    two = pairs.take(np.array([1, 1]))
    np.testing.assert_array_equal(two.response_ids, pairs.response_ids[[1, 1]])
    np.testing.assert_array_equal(two.kept, [1, 1])


def test_encode_sft_pairs_eos_drop_cut_and_forced_lengths(tok):
    with_eos = encode_sft_pairs(_CharTokenizer(), ["ab"], ["cd$"], block_size=4)
    np.testing.assert_array_equal(with_eos.response_ids[0], [12, 13, 1, 0])  # an EOS already there is not doubled
    no_eos = encode_sft_pairs(tok, ["1+2"], ["3"], block_size=4, add_eos=False)
    assert no_eos.response_lengths[0] == len(tok.encode("3"))
    long_prompt = "What is 3+4?"
    pairs = encode_sft_pairs(tok, ["1+2", long_prompt, "1+1"], ["a", "b", "c d e f g h i"], block_size=4,
                             max_prompt_len=5, max_response_len=6, prompt_len=8, response_len=12)
    np.testing.assert_array_equal(pairs.kept, [0, 2])  # the long prompt is dropped with its response
    assert pairs.prompt_ids.shape == (2, 8) and pairs.response_ids.shape == (2, 12)
    assert pairs.response_lengths[1] == 6
    assert tok.eos_id not in pairs.response_ids[1].tolist()  # cut responses carry no EOS


def test_encode_sft_pairs_bad_input(tok):
    with pytest.raises(ValueError, match=r"equal length, got 2 and 1"):
        encode_sft_pairs(tok, ["a", "b"], ["c"], block_size=4)
    with pytest.raises(ValueError, match=r"every prompt is longer than max_prompt_len=1"):
        encode_sft_pairs(tok, ["What is 3+4?"], ["7"], block_size=4, max_prompt_len=1)
    with pytest.raises(ValueError, match=r"response_len=6 must be a multiple of block_size=4"):
        encode_sft_pairs(tok, ["a"], ["b"], block_size=4, response_len=6)
    with pytest.raises(ValueError, match=r"response_buckets must be multiples of block_size=4"):
        encode_sft_pairs(tok, ["a"], ["b"], block_size=4, response_buckets=(5,))
    with pytest.raises(ValueError, match=r"max_response_len must be None or an int >= 1, got -2"):
        encode_sft_pairs(tok, ["a"], ["b c d"], block_size=4, max_response_len=-2)
    with pytest.raises(ValueError, match=r"max_prompt_len must be None or an int >= 1, got 0"):
        encode_sft_pairs(tok, ["a"], ["b"], block_size=4, max_prompt_len=0)
    with pytest.raises(ValueError, match=r"row 0"):  # a response longer than the forced length
        encode_sft_pairs(tok, ["a"], ["b c d e f g"], block_size=4, response_len=4)


# ---------------------------------------------------------------------------
# ExampleIterator
# ---------------------------------------------------------------------------


def _take(it, n):
    return [next(it).tolist() for _ in range(n)]


def test_iterator_is_deterministic_and_visits_each_epoch_once():
    a = _take(ExampleIterator(10, 4, seed=3), 10)
    b = _take(ExampleIterator(10, 4, seed=3), 10)
    c = _take(ExampleIterator(10, 4, seed=4), 10)
    assert a == b and a != c
    stream = np.concatenate(a)  # 40 indices = 4 epochs; batches run on across epoch ends
    epochs = stream.reshape(4, 10)
    for e in epochs:
        assert sorted(e.tolist()) == list(range(10))
    assert epochs[0].tolist() != epochs[1].tolist()  # reshuffled every epoch
    plain = np.concatenate(_take(ExampleIterator(10, 4, shuffle=False), 5))
    np.testing.assert_array_equal(plain, np.arange(20) % 10)


def test_iterator_state_resumes_mid_epoch():
    it = ExampleIterator(13, 5, seed=7)
    _take(it, 3)  # 15 indices: one epoch and 2 into the next
    state = it.state
    assert state["epoch"] == 1 and state["position"] == 2
    json.dumps(state)  # goes into a checkpoint's JSON meta
    expected = _take(it, 6)
    resumed = ExampleIterator(13, 5, seed=7).restore(json.loads(json.dumps(state)))
    assert _take(resumed, 6) == expected


def test_iterator_restore_rejects_another_stream():
    state = ExampleIterator(13, 5, seed=7).state
    for kwargs, field in ((dict(seed=8), "seed"), (dict(num_examples=14), "num_examples"),
                          (dict(batch_size=6), "batch_size"), (dict(shuffle=False), "shuffle")):
        args = dict(num_examples=13, batch_size=5, seed=7) | kwargs
        with pytest.raises(ValueError, match=f"saved with {field}="):
            ExampleIterator(**args).restore(state)
    with pytest.raises(ValueError, match=r"invalid iterator state epoch=0, position=13"):
        ExampleIterator(13, 5, seed=7).restore(dict(state, position=13))
    with pytest.raises(ValueError, match=r"iterator state is missing \['position'\]"):
        ExampleIterator(13, 5, seed=7).restore({"epoch": 0})


@pytest.mark.parametrize("process_count", [2, 4])
def test_processes_cover_each_global_batch_disjointly(process_count):
    B = 8
    reference = ExampleIterator(11, B, seed=1)
    shards = [ExampleIterator(11, B, seed=1, process_index=p, process_count=process_count)
              for p in range(process_count)]
    assert all(s.local_batch_size == B // process_count for s in shards)
    for _ in range(5):
        glob = reference.next_global()
        local = [next(s) for s in shards]
        # Together, in process order, the slices are exactly the global batch's rows.
        np.testing.assert_array_equal(np.concatenate(local), glob)
    # every process keeps the same global position, so any one of them can be checkpointed
    assert len({json.dumps(s.state) for s in shards} | {json.dumps(reference.state)}) == 1


def test_process_slices_are_disjoint_rows():
    # with num_examples >= batch_size, rows of one global batch are distinct examples,
    # so the process slices never share an example
    shards = [ExampleIterator(32, 8, seed=2, process_index=p, process_count=4) for p in range(4)]
    for _ in range(4):
        parts = [set(next(s).tolist()) for s in shards]
        assert sum(map(len, parts)) == 8 and len(set.union(*parts)) == 8


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_examples=0, batch_size=2), r"num_examples must be an int >= 1, got 0"),
    (dict(num_examples=4, batch_size=True), r"batch_size must be an int >= 1, got True"),
    (dict(num_examples=4, batch_size=6, process_count=4), r"batch_size=6 must be divisible by process_count=4"),
    (dict(num_examples=4, batch_size=4, process_index=2, process_count=2), r"process_index must be in \[0, process_count=2\), got 2"),
    (dict(num_examples=4, batch_size=4, seed=-1), r"seed must be an int >= 0, got -1"),
    (dict(num_examples=4, batch_size=4, position=4), r"position must be in \[0, num_examples=4\), got 4"),
    (dict(num_examples=4, batch_size=4, epoch=-1), r"epoch must be an int >= 0, got -1"),
])
def test_iterator_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ExampleIterator(**kwargs)


def test_padded_batches():
    batches = padded_batches(7, 3)
    assert [n for _, n in batches] == [3, 3, 1]
    assert [b.tolist() for b, _ in batches] == [[0, 1, 2], [3, 4, 5], [6, 6, 6]]
    assert padded_batches(0, 3) == []
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        padded_batches(3, 0)
