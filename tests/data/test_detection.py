"""Tests of mobilecnn.data.detection: the batch contract, determinism, shards, augmentation geometry, options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mobilecnn.data import DEFAULT_FASHION_MNIST_DIR
from mobilecnn.data import detection as DET
from mobilecnn.data.batches import Batches
from mobilecnn.data.folder import epoch_plan
from mobilecnn.data.images import Preprocessing
from mobilecnn.data.scenes import ScenesConfig, generate_scenes
from mobilecnn.data.segmentation import IMAGENET_MEAN, IMAGENET_STD
from mobilecnn.errors import DataError, UsageError

FMNIST = Path(DEFAULT_FASHION_MNIST_DIR)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    pytest.importorskip("skimage.data")
    if not (FMNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST is not installed in {FMNIST}")
    out = tmp_path_factory.mktemp("det") / "scenes"
    generate_scenes(ScenesConfig(task="detection", out=str(out), train_count=12, val_count=5, size=64, seed=3))
    return out


def _load(root, **kw):
    kw = {"batch_size": 4, "workers": 0, "resolution": 48, **kw}
    return DET.load_detection(root, **kw)


def _check_contract(x: torch.Tensor, y: torch.Tensor, n: int, side: int, classes: int) -> None:
    assert x.dtype == torch.float32 and x.shape == (n, 3, side, side)
    assert y.dtype == torch.float32 and y.dim() == 3 and y.shape[0] == n and y.shape[2] == 5 and y.shape[1] >= 1
    real = y[..., 4] > 0
    assert (y[~real] == 0).all()  # padding rows are all zero
    for i in range(n):  # an image's boxes come first, then its padding
        k = int(real[i].sum())
        assert real[i, :k].all()
    boxes, labels = y[real][:, :4], y[real][:, 4]
    assert ((boxes >= 0) & (boxes <= 1)).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert ((labels >= 1) & (labels < classes) & (labels == labels.round())).all()
    assert y.shape[1] == max(1, int(real.sum(1).max()))  # M: the most boxes of the batch


def test_scenes_batches_follow_the_contract(scenes):
    train, val, info = _load(scenes)
    assert isinstance(train, Batches) and isinstance(val, Batches)
    assert (len(train), len(val), info.train_size, info.val_size) == (3, 2, 12, 5)
    assert info.num_classes == 11 and info.category_ids == list(range(1, 11)) and info.resolution == 48
    assert info.preprocessing["resize"] == "square" and info.preprocessing["resolution"] == 48
    assert tuple(info.mean) == IMAGENET_MEAN and tuple(info.std) == IMAGENET_STD
    d = json.loads(json.dumps(info.to_dict()))
    assert d["task"] == "detection" and d["class_names"][0] == "background" and d["layout"] == "coco"
    for x, y in train.batches(0):
        _check_contract(x, y, 4, 48, 11)
    sizes = [x.shape[0] for x, _ in val.batches(0)]
    assert sizes == [4, 1]


def test_eval_batches_are_the_json_boxes_over_the_image_size(scenes):
    _, val, _ = _load(scenes, resolution=32)
    doc = json.loads((scenes / "annotations" / "instances_val.json").read_text())
    assert val.image_ids == [im["id"] for im in sorted(doc["images"], key=lambda im: im["id"])]
    assert val.image_sizes == [(64, 64)] * 5
    first = list(val.batches(0))
    assert all(torch.equal(a[1], b[1]) and torch.equal(a[0], b[0]) for a, b in zip(first, val.batches(0)))
    y = torch.cat([b[1][:, :7] if b[1].shape[1] >= 7 else torch.nn.functional.pad(b[1], (0, 0, 0, 7 - b[1].shape[1]))
                   for b in first])
    for k, image_id in enumerate(val.image_ids):
        anns = [a for a in doc["annotations"] if a["image_id"] == image_id]
        want = [[x / 64, yy / 64, (x + w) / 64, (yy + h) / 64, a["category_id"]]
                for a in anns for x, yy, w, h in [a["bbox"]]]
        assert torch.allclose(y[k, :len(want)], torch.tensor(want, dtype=torch.float32))


def test_default_data_is_the_scenes_cache(scenes, monkeypatch):
    import mobilecnn.data.scenes as S

    asked = []
    monkeypatch.setattr(S, "scenes_cache", lambda task, root=None, **kw: asked.append((task, root)) or scenes)
    _, _, info = DET.load_detection(None, batch_size=2, workers=0, cache_dir="/nowhere", resolution=32)
    assert asked == [("detection", "/nowhere")] and info.train_size == 12


def _all(batches, epoch, start=0):
    return [(x.clone(), y.clone()) for x, y in batches.batches(epoch, start)]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))


def test_batches_are_deterministic_resumable_and_worker_independent(scenes):
    train, _, _ = _load(scenes, seed=4)
    first = _all(train, 1)
    assert _same(first, _all(train, 1))
    assert _same(first[1:], _all(train, 1, start=1))
    assert not _same(first, _all(train, 2))
    two, _, _ = _load(scenes, seed=4, workers=2)
    assert _same(first, _all(two, 1))
    assert list(train.batches(1, start_step=len(train))) == []
    with pytest.raises(ValueError):
        list(train.batches(0, start_step=len(train) + 1))


def test_ranks_get_disjoint_train_batches_and_contiguous_eval_shards(scenes):
    ranks = [_load(scenes, batch_size=2, world_size=2, rank=r) for r in (0, 1)]
    assert [len(t) for t, _, _ in ranks] == [3, 3]
    assert ranks[0][1].image_ids + ranks[1][1].image_ids == _load(scenes)[1].image_ids
    assert ranks[0][1].image_ids == [1, 2, 3]
    seen = [{i for b in epoch_plan(t, 0) for i in b} for t, _, _ in ranks]
    assert not seen[0] & seen[1]


def _square_scene(box=(10, 14, 30, 40), size=(64, 48)) -> tuple[torch.Tensor, torch.Tensor]:
    """A dark image with one bright object filling ``box`` (x1, y1, x2, y2 pixels)."""
    img = torch.full((3, size[1], size[0]), 20, dtype=torch.uint8)
    x1, y1, x2, y2 = box
    img[:, y1:y2, x1:x2] = 235
    return img, torch.tensor([box], dtype=torch.float32)


def _transform(**steps) -> DET.DetTrainTransform:
    flags = {"photometric": False, "zoom_out": False, "iou_crop": False, "flip": False, **steps}
    pre = Preprocessing(32, 3, IMAGENET_MEAN, IMAGENET_STD)
    return DET.DetTrainTransform(DET.DetPipeline(pre, 32, **flags), DET._fill(pre))


def test_flip_maps_x1_to_one_minus_x2():
    img, boxes = _square_scene()
    t, plain = _transform(flip=True), _transform()
    base_x, base_b, _ = plain(img, boxes, torch.tensor([3]))
    flipped = 0
    for seed in range(8):
        torch.manual_seed(seed)
        x, b, labels = t(img, boxes, torch.tensor([3]))
        assert labels.tolist() == [3]
        if torch.equal(x, base_x):
            assert torch.allclose(b, base_b)
        else:
            flipped += 1
            assert torch.equal(x, base_x.flip(-1))
            assert torch.allclose(b[:, [0, 2]], 1 - base_b[:, [2, 0]])  # x1 -> 1 - x2, x2 -> 1 - x1
            assert torch.allclose(b[:, [1, 3]], base_b[:, [1, 3]])
    assert 0 < flipped < 8
    assert torch.allclose(base_b, torch.tensor([[10 / 64, 14 / 48, 30 / 64, 40 / 48]]))  # the warp scales each axis


def test_augmented_boxes_still_frame_their_objects():
    img, boxes = _square_scene()
    t = _transform(zoom_out=True, iou_crop=True, flip=True)
    kept = 0
    for seed in range(12):
        torch.manual_seed(seed)
        x, b, _ = t(img, boxes, torch.tensor([1]))
        assert x.shape == (3, 32, 32) and x.dtype == torch.uint8
        if not len(b):
            continue  # the crop cut the object away: Sanitize dropped its box
        kept += 1
        x1, y1, x2, y2 = (b[0] * 32).tolist()
        inner = x[0, int(y1) + 1:int(np.ceil(y2)) - 1, int(x1) + 1:int(np.ceil(x2)) - 1].float()
        outside = x[0].float().clone()
        outside[max(0, int(y1) - 1):int(np.ceil(y2)) + 1, max(0, int(x1) - 1):int(np.ceil(x2)) + 1] = 0
        assert inner.numel() == 0 or inner.mean() > 200, (seed, b)
        assert (outside > 128).sum() == 0, (seed, b)
    assert kept >= 6


def test_zoom_out_fills_with_the_mean():
    img, boxes = _square_scene()
    t = _transform(zoom_out=True)
    for seed in range(6):
        torch.manual_seed(seed)
        x, _, _ = t(img, boxes, torch.tensor([1]))
        if x[:, 0, 0].tolist() != [20, 20, 20]:  # zoomed out: the corner is canvas
            assert x[:, 0, 0].tolist() == list(DET._fill(Preprocessing(32, 3, IMAGENET_MEAN, IMAGENET_STD)))
            return
    pytest.fail("no zoom-out in 6 seeds (p = 0.5)")


def _one_image_coco(root: Path, boxes: list, image_count: int = 2) -> Path:
    images = [{"id": i + 1, "file_name": f"{i}.png", "width": 40, "height": 30} for i in range(image_count)]
    anns = [{"id": k + 1, "image_id": 1, "category_id": 7, "bbox": bx} for k, bx in enumerate(boxes)]
    doc = {"images": images, "annotations": anns, "categories": [{"id": 7, "name": "thing"}]}
    for split in ("train", "val"):
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))
        (root / split).mkdir()
        for im in images:
            Image.fromarray(np.full((30, 40, 3), 128, dtype=np.uint8)).save(root / split / im["file_name"])
    return root


def test_images_without_boxes_get_one_zero_row(tmp_path):
    root = _one_image_coco(tmp_path / "c", [[0, 0, 20, 15]])
    train, val, info = _load(root, batch_size=2, resolution=32)
    (x, y), = list(val.batches(0))
    assert y.shape == (2, 1, 5) and (y[1] == 0).all() and y[0, 0].tolist() == [0, 0, 0.5, 0.5, 1]
    assert info.class_names == ["background", "thing"] and info.category_ids == [7]
    root = _one_image_coco(tmp_path / "d", [])
    _, val, _ = _load(root, batch_size=2, resolution=32)
    (x, y), = list(val.batches(0))
    assert y.shape == (2, 1, 5) and (y == 0).all()
    train, _, _ = _load(root, batch_size=2, resolution=32)
    (x, y), = list(train.batches(0))
    assert y.shape == (2, 1, 5) and (y == 0).all()


@pytest.mark.parametrize("workers", [0, 2])
def test_a_file_that_fails_to_decode_is_one_line_naming_it(tmp_path, workers):
    root = _one_image_coco(tmp_path / "c", [[0, 0, 20, 15]])
    path = root / "val" / "1.png"
    path.write_bytes(path.read_bytes()[:60])  # the header reads, the pixels do not
    _, val, _ = _load(root, batch_size=2, resolution=32, workers=workers)
    with pytest.raises(DataError) as e:
        list(val.batches(0))
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_subsets_are_deterministic_by_seed(scenes):
    a = _load(scenes, subset=5, val_subset=3, seed=1)
    b = _load(scenes, subset=5, val_subset=3, seed=1)
    c = _load(scenes, subset=5, val_subset=3, seed=2)
    assert a[2].train_size == 5 and a[2].val_size == 3
    assert [s.image_id for s in a[0].samples] == [s.image_id for s in b[0].samples]
    assert a[1].image_ids == b[1].image_ids and a[1].image_ids == sorted(a[1].image_ids)
    assert [s.image_id for s in a[0].samples] != [s.image_id for s in c[0].samples] or a[1].image_ids != c[1].image_ids


def test_options_are_checked(scenes):
    with pytest.raises(UsageError, match="--resolution"):
        _load(scenes, resolution=8)
    with pytest.raises(UsageError, match="--zoom-out"):
        _load(scenes, zoom_out="no")
    with pytest.raises(DataError, match="batch size 13"):
        _load(scenes, batch_size=13)
    with pytest.raises(DataError, match="in_chans 1"):
        _load(scenes, preprocessing={"resolution": 32, "in_chans": 1, "mean": [0.5], "std": [0.5]})
    bgr = {"resolution": 224, "in_chans": 3, "mean": [0.4, 0.45, 0.5], "std": [0.2, 0.2, 0.2], "channel_order": "BGR",
           "resize": "center_crop"}
    _, _, info = _load(scenes, preprocessing=bgr)
    assert info.preprocessing["resolution"] == 48 and info.preprocessing["resize"] == "square"
    assert info.preprocessing["channel_order"] == "BGR" and tuple(info.mean) == (0.4, 0.45, 0.5)
