"""Tests of mobilecnn.data.segmentation_metrics.ConfusionMatrix: DeepLab's mIoU over the whole set."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mobilecnn.data.segmentation_metrics import ConfusionMatrix


def test_hand_computed_case_with_an_absent_class_and_ignored_pixels():
    # 4 classes; class 3 is in neither the prediction nor the ground truth: left out of the mean
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 3, 0]])  # predictions under 255 do not count
    cm = ConfusionMatrix(4)
    cm.update(pred, target)
    assert cm.matrix.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    r = cm.compute()
    # class 0: TP 1, FP 1 (a 2 predicted 0), FN 1 -> 1/3; class 1: TP 2, FP 1 -> 2/3; class 2: TP 1, FN 1 -> 1/2
    assert r["per_class_iou"][:3] == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    assert r["per_class_iou"][3] is None and r["classes_counted"] == 3
    assert r["miou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert r["pixel_accuracy"] == pytest.approx(4 / 6) and r["pixels"] == 6
    assert r["per_class_accuracy"][:3] == pytest.approx([1 / 2, 1.0, 1 / 2]) and r["per_class_accuracy"][3] is None
    assert r["mean_accuracy"] == pytest.approx(2 / 3)
    assert r["fw_iou"] == pytest.approx(2 / 6 * 1 / 3 + 2 / 6 * 2 / 3 + 2 / 6 * 1 / 2)


def test_a_class_only_predicted_counts_with_iou_zero():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 2, 0]), torch.tensor([0, 0, 0]))
    r = cm.compute()
    assert r["per_class_iou"] == [pytest.approx(2 / 3), None, 0.0]
    assert r["miou"] == pytest.approx(1 / 3)


def test_scores_are_arg_maxed_over_dimension_1():
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 2, 0, 0] = logits[0, 1, 1, 1] = 5.0  # elsewhere class 0 (ties: the first)
    cm = ConfusionMatrix(3)
    cm.update(logits, torch.tensor([[[2, 0], [0, 1]]]))
    assert cm.compute()["miou"] == 1.0
    with pytest.raises(ValueError, match="4 classes"):
        cm.update(torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))


def test_everything_ignored_or_empty_gives_nan():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([1, 0]), torch.tensor([255, 255]))
    r = cm.compute()
    assert math.isnan(r["miou"]) and math.isnan(r["pixel_accuracy"]) and r["pixels"] == 0
    assert r["per_class_iou"] == [None, None]


def test_bad_input_is_refused():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="target holds class 3; accepted: 0..2 and 255"):
        cm.update(torch.tensor([0]), torch.tensor([3]))
    with pytest.raises(ValueError, match="prediction holds class 5"):
        cm.update(torch.tensor([5]), torch.tensor([0]))
    with pytest.raises(ValueError, match="differs"):
        cm.update(torch.zeros(2, 3), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="num_classes"):
        ConfusionMatrix(0)
    assert int(cm.matrix.sum()) == 0  # nothing counted from a refused batch


def _reference(pred: np.ndarray, target: np.ndarray, n: int) -> np.ndarray:
    keep = target != 255
    return np.bincount(n * target[keep].astype(np.int64) + pred[keep], minlength=n * n).reshape(n, n)


def test_batches_sum_and_merge_equals_the_whole_set():
    g = torch.Generator().manual_seed(0)
    n = 6
    target = torch.randint(0, n, (8, 16, 16), generator=g)
    target[torch.rand(8, 16, 16, generator=g) < 0.1] = 255
    pred = torch.randint(0, n, (8, 16, 16), generator=g)
    whole = ConfusionMatrix(n)
    whole.update(pred, target)
    assert np.array_equal(whole.matrix.numpy(), _reference(pred.numpy(), target.numpy(), n))
    a, b = ConfusionMatrix(n), ConfusionMatrix(n)
    for k in range(8):
        (a if k < 3 else b).update(pred[k:k + 1], target[k:k + 1])
    assert torch.equal(a.merge(b).matrix, whole.matrix)
    assert torch.equal(ConfusionMatrix(n).merge(whole.matrix.clone()).matrix, whole.matrix)
    assert a.all_reduce() is a  # no process group: nothing to sum
    with pytest.raises(ValueError, match="cannot merge"):
        a.merge(ConfusionMatrix(n + 1))
    a.reset()
    assert int(a.matrix.sum()) == 0


def test_matches_torchmetrics_on_random_data():
    pytest.importorskip("torchmetrics")
    from torchmetrics.classification import MulticlassJaccardIndex

    g = torch.Generator().manual_seed(1)
    n = 7
    ours = ConfusionMatrix(n)
    theirs = MulticlassJaccardIndex(n, ignore_index=255, average=None)
    for _ in range(3):
        target = torch.randint(0, n - 1, (4, 20, 24), generator=g)  # class 6 never in the ground truth ...
        target[torch.rand(4, 20, 24, generator=g) < 0.15] = 255
        pred = torch.randint(0, n - 2, (4, 20, 24), generator=g)  # ... nor predicted: undefined IoU
        ours.update(pred, target)
        theirs.update(pred, target)
    mine = ours.compute()["per_class_iou"]
    ref = theirs.compute().tolist()
    assert mine[-1] is None and ref[-1] == 0.0  # torchmetrics reports the undefined class as 0
    assert mine[:-1] == pytest.approx(ref[:-1], abs=1e-6)
    assert ours.compute()["miou"] == pytest.approx(float(np.mean(ref[:-1])), abs=1e-6)
