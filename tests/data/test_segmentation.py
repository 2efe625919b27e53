"""Tests of mobilecnn.data.segmentation(_io): the VOC and folder-pair layouts, joint augmentation, bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mobilecnn.data import DEFAULT_FASHION_MNIST_DIR
from mobilecnn.data import segmentation as SEG
from mobilecnn.data.batches import Batches
from mobilecnn.data.images import Preprocessing
from mobilecnn.data.scenes import SCENE_CLASSES, ScenesConfig, generate_scenes, voc_palette
from mobilecnn.data.segmentation_io import VOC_CLASSES, find_layout
from mobilecnn.errors import DataError, UsageError

FMNIST = Path(DEFAULT_FASHION_MNIST_DIR)
CLASSES = ("background", "cat", "dog")


def _needs_scenes() -> None:
    pytest.importorskip("skimage.data")
    if not (FMNIST / "train-images-idx3-ubyte.gz").is_file() or not (FMNIST / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST is not installed in {FMNIST} (apt-get install dataset-fashion-mnist)")


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    _needs_scenes()
    out = tmp_path_factory.mktemp("seg") / "voc"
    generate_scenes(ScenesConfig(task="segmentation", out=str(out), train_count=8, val_count=4, size=64))
    return out


def _mask_values(rng: np.random.Generator, h: int, w: int, n: int) -> np.ndarray:
    m = rng.integers(0, n, size=(h, w), dtype=np.uint8)
    m[rng.random((h, w)) < 0.05] = 255
    return m


def _save_mask(arr: np.ndarray, path: Path, mode: str = "P") -> None:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    im = Image.frombytes(mode, (arr.shape[1], arr.shape[0]), arr.tobytes())  # "P": the values are the indices
    if mode == "P":
        im.putpalette(voc_palette())
    im.save(path)


def _folders(root: Path, sizes=((40, 30), (36, 36), (50, 20)), val_sizes=((40, 30), (50, 20)),
             classes=CLASSES) -> Path:
    """A folder-pair dataset: train/{images,masks}, val/{images,masks}, labels.txt; random pixels and labels."""
    rng = np.random.default_rng(0)
    for split, sz in (("train", sizes), ("val", val_sizes)):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir()
        for i, (w, h) in enumerate(sz):
            ext = "jpg" if i % 2 else "png"
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / split / "images" /
                                                                                  f"{split}{i}.{ext}")
            _save_mask(_mask_values(rng, h, w, len(classes)), root / split / "masks" / f"{split}{i}.png",
                       "P" if i % 2 else "L")
    (root / "labels.txt").write_text("".join(c + "\n" for c in classes))
    return root


def _voc(root: Path, n_train: int = 3, n_val: int = 2) -> Path:
    """A tiny Pascal VOC tree without labels.txt (so the 21 VOC classes)."""
    rng = np.random.default_rng(1)
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True)
    for split, n in (("train", n_train), ("val", n_val)):
        ids = [f"{split}_{i}" for i in range(n)]
        for i in ids:
            Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{i}.jpg")
            _save_mask(_mask_values(rng, 24, 32, 21), root / "SegmentationClass" / f"{i}.png")
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(i + "\n" for i in ids))
    return root


def _load(root, **kw):
    kw = {"batch_size": 2, "workers": 0, **kw}
    return SEG.load_segmentation(root, **kw)


# ------------------------------------------------------------------------------------------------
# the VOC layout written by the scenes generator


def test_scenes_voc_loads_with_the_right_shapes(voc):
    train, val, info = _load(voc, batch_size=4)
    assert find_layout(voc) == (voc, "voc")
    assert info.layout == "voc" and info.num_classes == 11 and info.class_names == SCENE_CLASSES
    assert info.ignore_index == 255 and info.train_size == 8 and info.val_size == 4
    assert info.crop_size == info.resolution == 64 and info.labels_from == str(voc / "labels.txt")
    assert len(train) == 2 and len(val) == 1 and isinstance(train, Batches) and isinstance(val, Batches)
    batches = list(train.batches(0))
    assert len(batches) == 2
    for x, y in batches:
        assert x.shape == (4, 3, 64, 64) and x.dtype == torch.float32
        assert y.shape == (4, 64, 64) and y.dtype == torch.int64
        assert set(y.unique().tolist()) <= set(range(11)) | {255}
    (x, y), = list(val.batches(0))
    assert x.shape == (4, 3, 64, 64) and y.shape == (4, 64, 64)
    ids = (voc / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    for k, scene in enumerate(ids):  # eval: the mask exactly as on disk, the image only normalised
        mask = np.asarray(Image.open(voc / "SegmentationClass" / f"{scene}.png"))
        assert np.array_equal(y[k].numpy(), mask)
        pre = Preprocessing.from_dict(info.preprocessing)
        image = torch.from_numpy(np.array(Image.open(voc / "JPEGImages" / f"{scene}.jpg"))).permute(2, 0, 1)
        assert torch.allclose(x[k], pre.normalize(image))
    d = json.loads(json.dumps(info.to_dict()))
    assert d["num_classes"] == 11 and d["ignore_index"] == 255 and d["task"] == "segmentation"
    assert info.source == str(voc.resolve())


def test_default_data_is_the_scenes_cache(voc, monkeypatch):
    import mobilecnn.data.scenes as scenes

    asked = []
    monkeypatch.setattr(scenes, "scenes_cache", lambda task, root=None, **kw: asked.append((task, root)) or voc)
    _, _, info = SEG.load_segmentation(None, batch_size=2, workers=0, cache_dir="/nowhere")
    assert asked == [("segmentation", "/nowhere")] and info.train_size == 8


def test_batches_are_deterministic_resumable_and_worker_independent(voc):
    train, _, _ = _load(voc, batch_size=2, seed=5)
    first = list(train.batches(1))
    again = list(train.batches(1))
    resumed = list(train.batches(1, start_step=2))
    other_epoch = list(train.batches(2))
    threaded, _, _ = _load(voc, batch_size=2, seed=5, workers=1)
    in_worker = list(threaded.batches(1))
    for a, b, c in zip(first, again, in_worker):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert torch.equal(a[0], c[0]) and torch.equal(a[1], c[1])
    for a, b in zip(first[2:], resumed):
        assert torch.equal(a[1], b[1])
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(first, other_epoch))
    state = torch.random.get_rng_state()
    list(train.batches(3))
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG is untouched


def test_ranks_get_disjoint_shards(voc):
    loads = [_load(voc, batch_size=2, rank=r, world_size=2) for r in range(2)]
    seen = []
    for train, val, _ in loads:
        assert len(train) == 2 and len(val) == 1  # 8 train images: 4 batches dealt round-robin
        seen.append([b for b in train._plan(0)])
    flat = [i for rank in seen for b in rank for i in b]
    assert sorted(flat) == list(range(8))
    vals = [v._plan(0) for _, v, _ in loads]
    assert sorted(i for v in vals for b in v for i in b) == list(range(4))


# ------------------------------------------------------------------------------------------------
# joint augmentation


def _position_mask(h: int, w: int) -> np.ndarray:
    r, c = np.mgrid[0:h, 0:w]
    return ((r * 17 + c * 5) % 250).astype(np.uint8)  # distinct neighbours: a crop's place is recoverable


def test_augmentation_keeps_image_and_mask_aligned_and_pads_with_ignore():
    mask = torch.from_numpy(_position_mask(20, 28))
    image = mask.expand(3, -1, -1).clone()
    aug = SEG.SegTrainTransform(24, (1.0, 1.0), True, fill=(255, 255, 255))  # image padding = mask padding
    flips = 0
    for seed in range(12):
        torch.manual_seed(seed)
        x, y = aug(image, mask)
        assert x.shape == (3, 24, 24) and y.shape == (24, 24) and y.dtype == torch.uint8
        assert torch.equal(x[0], y) and torch.equal(x[1], y) and torch.equal(x[2], y)
        assert int((y == 255).sum()) == 24 * 24 - 20 * 24  # 4 rows of padding, the columns cropped
        rows = [r for r in range(24) if (y[r] != 255).all()]
        window = y[rows]
        found = [(c, f) for f in (False, True) for c in range(28 - 24 + 1)
                 if torch.equal(window, (mask.flip(-1) if f else mask)[:, c:c + 24])]
        assert found, "the mask crop is a window of the (flipped) mask"
        flips += found[0][1]
    assert 0 < flips < 12


def test_random_scale_resizes_the_mask_nearest_and_the_image_alike():
    blocks = np.kron(np.arange(16, dtype=np.uint8).reshape(4, 4) * 10, np.ones((16, 16), dtype=np.uint8))
    mask = torch.from_numpy(blocks)
    image = mask.expand(3, -1, -1).clone()
    aug = SEG.SegTrainTransform(48, (0.5, 2.0), True, fill=(0, 0, 0))
    for seed in range(6):
        torch.manual_seed(seed)
        x, y = aug(image, mask)
        assert set(y.unique().tolist()) <= set(blocks.ravel().tolist()) | {255}  # nearest: no new labels
        valid = y != 255
        pooled = torch.nn.functional.max_pool2d(y[None, None].float(), 5, 1, 2)[0, 0]
        low = -torch.nn.functional.max_pool2d(-y[None, None].float(), 5, 1, 2)[0, 0]
        interior = valid & (pooled == low)  # 5x5 neighbourhood of one label: away from block edges and padding
        assert interior.sum() > 0
        assert (x[0].float() - y.float())[interior].abs().max() <= 1


def test_train_padding_is_the_mean_for_the_image_and_255_for_the_mask(tmp_path):
    root = _folders(tmp_path / "d", sizes=((20, 16), (20, 16)), val_sizes=((20, 16),))
    train, _, info = _load(root, crop_size=64, scale_range=(1.0, 1.0))
    x, y = next(train.batches(0))
    assert info.crop_size == 64
    pad = y == 255
    assert int(pad.sum()) >= 2 * (64 * 64 - 20 * 16)
    outside = pad[:, None].expand_as(x) & (x.abs() < 0.03)  # the mean pixel normalises to ~0
    assert int(outside.sum()) >= 3 * 2 * (64 * 64 - 20 * 16)


def test_bgr_preprocessing_fills_with_the_mean_in_rgb_order():
    pre = Preprocessing(32, 3, (0.2, 0.25, 0.6), (1.0, 1.0, 1.0), channel_order="BGR")
    assert SEG._fill(pre) == (153, 64, 51)
    assert SEG._fill(Preprocessing(32, 3, SEG.IMAGENET_MEAN, SEG.IMAGENET_STD)) == (124, 116, 104)


# ------------------------------------------------------------------------------------------------
# the folder-pair layout and a plain VOC tree


def test_folder_pairs_load_and_eval_pads_to_the_multiple(tmp_path):
    root = _folders(tmp_path / "d")
    train, val, info = _load(root, batch_size=3, eval_batch_size=2)
    assert info.layout == "folders" and info.class_names == list(CLASSES) and info.num_classes == 3
    assert info.crop_size == 64  # the largest side (50) rounded up to 32
    x, y = next(train.batches(0))
    assert x.shape == (3, 3, 64, 64) and y.shape == (3, 64, 64)
    (x, y), = list(val.batches(0))
    assert x.shape == (2, 3, 32, 64) and y.shape == (2, 32, 64)  # heights 30, 20 -> 32; widths 40, 50 -> 64
    for k, (w, h) in enumerate(((40, 30), (50, 20))):
        mask = np.asarray(Image.open(root / "val" / "masks" / f"val{k}.png"))
        assert np.array_equal(y[k, :h, :w].numpy(), mask)
        assert (y[k, h:] == 255).all() and (y[k, :, w:] == 255).all()
        assert (x[k, :, h:] == 0).all() and (x[k, :, :, w:] == 0).all()


def test_plain_voc_tree_uses_the_21_voc_classes(tmp_path):
    root = _voc(tmp_path / "VOCdevkit" / "VOC2012")
    _, val, info = _load(tmp_path)  # the folder above VOCdevkit is accepted too
    assert info.class_names == list(VOC_CLASSES) and info.num_classes == 21
    assert "21 Pascal VOC classes" in info.labels_from
    assert info.source == str(root.resolve())
    x, y = next(val.batches(0))
    assert x.shape == (2, 3, 32, 32) and y.shape == (2, 32, 32)


def test_colour_and_grey_rgb_masks_are_mapped(tmp_path):
    root = _folders(tmp_path / "d")
    palette = np.array(voc_palette(), dtype=np.uint8).reshape(256, 3)
    masks = {}
    for k, (w, h) in enumerate(((40, 30), (50, 20))):
        path = root / "val" / "masks" / f"val{k}.png"
        masks[k] = np.asarray(Image.open(path)).copy()
        rgb = palette[masks[k]] if k == 0 else np.repeat(masks[k][..., None], 3, axis=2)  # VOC colours / grey
        Image.fromarray(rgb, "RGB").save(path)
    _, val, _ = _load(root, eval_batch_size=2)
    (_, y), = list(val.batches(0))
    assert np.array_equal(y[0, :30, :40].numpy(), masks[0]) and np.array_equal(y[1, :20, :50].numpy(), masks[1])


def test_cmyk_images_are_converted(tmp_path):
    root = _folders(tmp_path / "d")
    path = root / "train" / "images" / "train1.jpg"
    Image.open(path).convert("CMYK").save(path)
    train, _, _ = _load(root, batch_size=3)
    x, _ = next(train.batches(0))
    assert x.shape == (3, 3, 64, 64)


def test_options_are_checked(tmp_path):
    root = _folders(tmp_path / "d")
    with pytest.raises(UsageError, match="--crop-size"):
        _load(root, crop_size=0)
    with pytest.raises(UsageError, match="--scale-range"):
        _load(root, scale_range=(2.0, 1.0))
    with pytest.raises(DataError, match="batch size 8 is larger than the 3 training images"):
        _load(root, batch_size=8)


# ------------------------------------------------------------------------------------------------
# bad input: one line naming the file, nothing written


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def _break_missing_mask(root: Path) -> str:
    (root / "train" / "masks" / "train1.png").unlink()
    return "train1.png"


def _break_size(root: Path) -> str:
    _save_mask(np.zeros((31, 40), np.uint8), root / "val" / "masks" / "val0.png")
    return "val0.png"


def _break_colours(root: Path) -> str:
    Image.fromarray(np.full((30, 40, 3), (10, 200, 30), np.uint8)).save(root / "val" / "masks" / "val0.png")
    return "val0.png"


def _break_16bit(root: Path) -> str:
    Image.fromarray(np.zeros((36, 36), np.uint16)).save(root / "train" / "masks" / "train1.png")
    assert Image.open(root / "train" / "masks" / "train1.png").mode.startswith("I")
    return "train1.png"


def _break_cmyk_mask(root: Path) -> str:
    Image.new("CMYK", (36, 36)).save(root / "train" / "masks" / "train1.png.tif", format="TIFF")
    os.replace(root / "train" / "masks" / "train1.png.tif", root / "train" / "masks" / "train1.png")
    return "train1.png"


def _break_jpeg_mask(root: Path) -> str:
    Image.new("L", (36, 36)).save(root / "train" / "masks" / "train1.png", format="JPEG")
    return "train1.png"


def _break_one_class(root: Path) -> str:
    (root / "labels.txt").write_text("background\n")
    return "labels.txt"


def _break_no_labels(root: Path) -> str:
    (root / "labels.txt").unlink()
    return "labels.txt"


def _break_empty_images(root: Path) -> str:
    for p in (root / "val" / "images").iterdir():
        p.unlink()
    return os.path.join("val", "images")


def _break_unreadable_image(root: Path) -> str:
    (root / "train" / "images" / "train0.png").write_bytes(b"not an image")
    return "train0.png"


@pytest.mark.parametrize("damage", [_break_missing_mask, _break_size, _break_colours, _break_16bit,
                                    _break_cmyk_mask, _break_jpeg_mask, _break_one_class, _break_no_labels,
                                    _break_empty_images, _break_unreadable_image])
def test_bad_folder_input_is_one_line_naming_the_file(tmp_path, damage):
    root = _folders(tmp_path / "d")
    name = damage(root)
    before = _tree(tmp_path)
    with pytest.raises(DataError) as err:
        _load(root)
    msg = str(err.value)
    assert name in msg and "\n" not in msg and len(msg) < 400, msg
    assert _tree(tmp_path) == before  # nothing written


def test_empty_voc_split_list_is_refused(tmp_path):
    root = _voc(tmp_path / "voc")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n")
    with pytest.raises(DataError, match=r"val\.txt lists no images"):
        _load(root)


def test_voc_id_without_image_is_refused(tmp_path):
    root = _voc(tmp_path / "voc")
    with open(root / "ImageSets" / "Segmentation" / "train.txt", "a") as fh:
        fh.write("ghost\n")
    with pytest.raises(DataError, match=r"ghost\.jpg .* is missing"):
        _load(root)


def test_not_a_dataset_is_refused(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(DataError, match="is not a segmentation dataset"):
        _load(tmp_path / "x")
    with pytest.raises(DataError, match="does not exist"):
        _load(tmp_path / "nope")


@pytest.mark.parametrize("workers", [0, 1])
def test_label_values_out_of_range_fail_on_load_naming_the_mask(tmp_path, workers):
    root = _folders(tmp_path / "d")
    bad = np.zeros((20, 50), np.uint8)
    bad[3, 4] = 7  # 3 classes: 0..2 and 255 accepted
    _save_mask(bad, root / "val" / "masks" / "val1.png")
    _, val, _ = _load(root, workers=workers)  # headers are fine: values are checked when the mask is loaded
    with pytest.raises(DataError) as err:
        list(val.batches(0))
    msg = str(err.value)
    assert "val1.png" in msg and "label value(s) 7" in msg and "0..2 and 255" in msg and "\n" not in msg
