"""Metrics writer (JSONL + TensorBoard events), JSONL reader, PNG curves."""

import json
import math
import struct

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from tensorboardX.proto import event_pb2

from tracerl_jax.train.metrics import JSONL_NAME, TB_DIR, MetricsWriter, plot_curves, read_jsonl


def _read_events(directory) -> list:
    """Every ``Event`` proto in the TensorBoard event files under ``directory``.

    The files are TFRecords: ``uint64 length, uint32 crc, data, uint32 crc``
    per record; no TensorFlow is needed to read them.
    """
    events = []
    for path in sorted(directory.rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            events.append(event_pb2.Event.FromString(data[pos + 12:pos + 12 + n]))
            pos += 12 + n + 4
    return events


def _scalars(events) -> dict[str, list[tuple[int, float]]]:
    out = {}
    for e in events:
        for v in e.summary.value:
            if v.HasField("simple_value"):
                out.setdefault(v.tag, []).append((e.step, v.simple_value))
    return out


def test_writes_jsonl_and_tensorboard(tmp_path):
    with MetricsWriter(tmp_path / "run") as w:
        recorded = w.write(1, {"train/loss": 0.5, "eval/accuracy": np.float32(0.25), "count": 3,
                               "flag": True, "jax": jnp.asarray(1.5), "one": jnp.ones((1, 1)) * 2,
                               "vector": np.ones(3), "name": "x", "list": [1, 2]})
        w.write(2, {"train/loss": 0.25})
        assert w.jsonl_path == tmp_path / "run" / JSONL_NAME
    assert recorded == {"train/loss": 0.5, "eval/accuracy": 0.25, "count": 3.0, "flag": 1.0, "jax": 1.5,
                        "one": 2.0}
    records = read_jsonl(tmp_path / "run" / JSONL_NAME)
    assert [r["step"] for r in records] == [1, 2]
    assert {k: v for k, v in records[0].items() if k != "time"} == {"step": 1, **recorded}
    assert records[1]["train/loss"] == 0.25 and records[1]["time"] >= records[0]["time"]
    scalars = _scalars(_read_events(tmp_path / "run" / TB_DIR))
    assert scalars["train/loss"] == [(1, 0.5), (2, 0.25)]
    assert scalars["eval/accuracy"] == [(1, 0.25)]
    assert set(scalars) == set(recorded)


def test_non_finite_values_are_null_in_jsonl_and_left_out_of_tensorboard(tmp_path):
    with MetricsWriter(tmp_path) as w:
        recorded = w.write(3, {"loss": float("nan"), "ratio": np.inf, "ok": 1.0})
    assert math.isnan(recorded["loss"]) and recorded["ratio"] == math.inf
    line = (tmp_path / JSONL_NAME).read_text().strip()
    rec = json.loads(line)  # strict JSON: no NaN/Infinity literals
    assert "NaN" not in line and "Infinity" not in line
    assert rec["loss"] is None and rec["ratio"] is None and rec["ok"] == 1.0
    assert set(_scalars(_read_events(tmp_path / TB_DIR))) == {"ok"}


def test_text_summaries_go_to_tensorboard(tmp_path):
    with MetricsWriter(tmp_path) as w:
        w.write_text(4, "samples", "2+3=\\boxed{5}")
    texts = [(e.step, v.tag, list(v.tensor.string_val)) for e in _read_events(tmp_path / TB_DIR)
             for v in e.summary.value if v.metadata.plugin_data.plugin_name == "text"]
    assert texts == [(4, "samples/text_summary", [b"2+3=\\boxed{5}"])]


def test_resumed_writer_appends(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False) as w:
        w.write(1, {"a": 1.0})
    with MetricsWriter(tmp_path, tensorboard=False) as w:
        w.write(2, {"a": 2.0})
    assert [(r["step"], r["a"]) for r in read_jsonl(tmp_path / JSONL_NAME)] == [(1, 1.0), (2, 2.0)]
    assert not (tmp_path / TB_DIR).exists()


def test_only_process_zero_writes(tmp_path):
    with MetricsWriter(tmp_path / "other", process_index=1) as w:
        assert not w.active
        assert w.write(1, {"a": 1.0, "s": "x"}) == {"a": 1.0}
        w.write_text(1, "t", "x")
        w.flush()
    assert not (tmp_path / "other").exists()


def test_read_jsonl_skips_blank_and_torn_lines(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1, "a": 1}\n\n{"step": 2, "a": 2}\n{"step": 3, "a"')
    assert read_jsonl(path) == [{"step": 1, "a": 1}, {"step": 2, "a": 2}]


def test_plot_curves_writes_a_png(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False) as w:
        for step in range(1, 6):
            w.write(step, {"train/loss": 1.0 / step})
            if step % 2 == 0:
                w.write(step, {"eval/accuracy": step / 10})
        w.write(4, {"eval/accuracy": 0.9})  # a resumed run re-logging step 4
    out = plot_curves(tmp_path / JSONL_NAME, tmp_path / "plots" / "curves.png",
                      ["train/loss", "eval/accuracy", "absent"], title="run")
    assert out == tmp_path / "plots" / "curves.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as img:
        width, height = img.size
    # one panel per key that occurs (two here), 100 dpi
    assert (width, height) == (600, 520)


def test_plot_curves_bad_keys(tmp_path):
    path = tmp_path / JSONL_NAME
    path.write_text('{"step": 1, "a": 1.0}\n')
    with pytest.raises(ValueError, match=r"keys must be a sequence of metric names, got the string 'a'"):
        plot_curves(path, tmp_path / "x.png", "a")
    with pytest.raises(ValueError, match="keys is empty"):
        plot_curves(path, tmp_path / "x.png", [])
    with pytest.raises(ValueError, match=r"none of \['b'\] occurs"):
        plot_curves(path, tmp_path / "x.png", ["b"])
    assert not (tmp_path / "x.png").exists()
