"""Class 15: after an interrupt and a resume, the epoch's logged metrics equal the uninterrupted run's."""

import json


def _lines(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_resumed_epoch_logs_the_same_train_loss(tmp_path, make_folder, train_run):
    data = make_folder(tmp_path / "d", per_class=8, classes="ab")
    common = dict(batch_size=2, max_steps=None, checkpoint_every=3)
    whole = train_run(data, tmp_path / "whole", **common)
    part = train_run(data, tmp_path / "part", **{**common, "max_steps": 5})
    train_run(data, part, **{**common, "resume": True})
    a, b = _lines(whole)[-1], _lines(part)[-1]
    assert a["step"] == b["step"] == 8
    for key in ("train_loss", "train_accuracy", "val_top1", "val_loss"):
        assert a[key] == b[key], key
