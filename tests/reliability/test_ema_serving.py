"""The EMA decay warms up (timm's rule), and a run serves the raw weights when they beat the EMA ones."""

import json

import torch
from torch import nn

from mobilecnn.evaluate import evaluate_run
from mobilecnn.runs.rundir import load_trained
from mobilecnn.train.optim import ModelEma


def test_decay_warms_up():
    model = nn.Linear(2, 2)
    ema = ModelEma(model, 0.9999)
    decays = []
    for _ in range(200):
        decays.append(ema.current_decay())
        ema.update(model)
    assert decays[0] == 0.1 and abs(decays[90] - 91 / 100) < 1e-12 and max(decays) < 0.9999
    start = ema.module.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    for _ in range(50):  # at n ~ 200 the decay is ~0.955: 50 updates close ~90% of the gap (0.9999: 0.5%)
        ema.update(model)
    moved = (ema.module.weight - start).mean() / (model.weight - start).mean()
    assert moved > 0.85


def test_short_mobilenetv2_recipe_run_serves_the_better_weights(tmp_path, make_folder, train_run):
    data = make_folder(tmp_path / "d", per_class=8, classes="abc")
    run = train_run(data, tmp_path / "run", recipe="mobilenetv2", ema=None, max_steps=None, epochs=3, batch_size=4,
                     lr=0.02)
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    raw = evaluate_run(run, prefer_ema=False, out_dir=tmp_path / "raw", workers=0)["top1"]
    served = evaluate_run(run, out_dir=tmp_path / "served", workers=0)
    ema_top1 = evaluate_run(run, out_dir=tmp_path / "ema", workers=0)["top1"] if last["weights"] == "ema" else \
        last["ema_val_top1"]
    assert served["top1"] == max(raw, ema_top1) == last["val_top1"]
    assert load_trained(run).weights == last["weights"]
