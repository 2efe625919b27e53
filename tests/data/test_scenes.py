"""Tests of mobilecnn.data.scenes: Fashion-MNIST items composited on real textures, VOC and COCO layouts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mobilecnn.data import DATA_DIR_ENV, DEFAULT_FASHION_MNIST_DIR, FASHION_MNIST_CLASSES, read_fashion_mnist
from mobilecnn.data import scenes as S
from mobilecnn.errors import DataError, UsageError

pytest.importorskip("skimage.data")
FMNIST = Path(DEFAULT_FASHION_MNIST_DIR)
pytestmark = pytest.mark.skipif(
    not (FMNIST / "train-images-idx3-ubyte.gz").is_file() or not (FMNIST / "t10k-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST is not installed in {FMNIST} (apt-get install dataset-fashion-mnist)")


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.delenv(S.HOME_ENV, raising=False)


def _config(task: str, out: Path, **kw) -> S.ScenesConfig:
    kw = {"train_count": 10, "val_count": 5, "size": 96, "seed": 3, **kw}
    return S.ScenesConfig(task=task, out=str(out), **kw)


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    out = tmp_path_factory.mktemp("seg") / "voc"
    return out, S.generate_scenes(_config("segmentation", out))


@pytest.fixture(scope="module")
def det(tmp_path_factory):
    out = tmp_path_factory.mktemp("det") / "coco"
    out.mkdir()  # an existing empty folder is accepted
    return out, S.generate_scenes(_config("detection", out))


def _manifest(out: Path) -> dict:
    return json.loads((out / S.MANIFEST).read_text())


def _tree(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------
# segmentation: Pascal VOC layout


def test_voc_layout_files_and_summary(seg):
    out, summary = seg
    assert summary["task"] == "segmentation" and summary["num_classes"] == 11
    assert summary["train"]["scenes"] == 10 and summary["val"]["scenes"] == 5
    assert (out / "labels.txt").read_text().splitlines() == ["background", *FASHION_MNIST_CLASSES]
    assert (out / S.COMPLETE_MARKER).is_file()
    ids = {split: (out / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
           for split in ("train", "val")}
    assert len(ids["train"]) == 10 and len(ids["val"]) == 5 and not set(ids["train"]) & set(ids["val"])
    assert sorted(p.stem for p in (out / "JPEGImages").glob("*.jpg")) == sorted(ids["train"] + ids["val"])
    assert sorted(p.stem for p in (out / "SegmentationClass").glob("*.png")) == sorted(ids["train"] + ids["val"])
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".scenes")]  # staging folder renamed away


def test_voc_masks_are_palette_pngs_matching_the_items(seg):
    out, _ = seg
    palette = S.voc_palette()
    assert palette[:6] == [0, 0, 0, 128, 0, 0] and palette[-3:] == [224, 224, 192]
    manifest = _manifest(out)
    for split in ("train", "val"):
        for scene in manifest["scenes"][split]:
            with Image.open(out / scene["file"]) as im:
                assert im.mode == "RGB" and im.size == (96, 96)
            with Image.open(out / "SegmentationClass" / f"{scene['id']}.png") as im:
                assert im.mode == "P" and im.size == (96, 96) and im.getpalette()[:768] == palette
                label = np.asarray(im)
            assert set(np.unique(label).tolist()) <= set(range(11)) | {255}
            items = scene["items"]
            assert 1 <= len(items) <= 6
            present = set(np.unique(label).tolist()) - {0, 255}
            assert present == {it["class"] + 1 for it in items}
            for c in present:  # each class's pixels are exactly its items' visible masks
                assert (label == c).sum() == sum(it["area"] for it in items if it["class"] + 1 == c)
            for it in items:
                assert it["area"] >= S.MIN_VISIBLE * it["mask_area"] > 0  # occlusion hides at most half
                x, y, w, h = it["bbox"]
                assert 0 <= x and 0 <= y and x + w <= 96 and y + h <= 96
            # the ignore band is thin: a small share of the image
            assert (label == 255).mean() < 0.1


def test_background_is_a_real_texture_not_flat(seg):
    out, _ = seg
    for scene in _manifest(out)["scenes"]["train"]:
        rgb = np.asarray(Image.open(out / scene["file"]), dtype=np.float32)
        label = np.asarray(Image.open(out / "SegmentationClass" / f"{scene['id']}.png"))
        background = rgb[label == 0].mean(axis=1)
        assert background.size > 0.3 * label.size
        assert background.std() > 8.0, scene["background"]
        assert scene["background"]["texture"] in S.TEXTURES


def test_train_and_val_items_come_from_different_splits(seg):
    out, _ = seg
    manifest = _manifest(out)
    assert manifest["classes"] == S.SCENE_CLASSES and manifest["version"] == S.SCENES_VERSION
    _, train_labels = read_fashion_mnist("train")
    _, val_labels = read_fashion_mnist("val")
    for split, source, labels in (("train", "train", train_labels), ("val", "t10k", val_labels)):
        for scene in manifest["scenes"][split]:
            for it in scene["items"]:
                assert it["split"] == source
                assert 0 <= it["index"] < len(labels) and int(labels[it["index"]]) == it["class"]
                assert it["name"] == FASHION_MNIST_CLASSES[it["class"]]


def test_same_seed_same_bytes_other_seed_other_scenes(seg, tmp_path):
    out, _ = seg
    again = tmp_path / "again"
    S.generate_scenes(_config("segmentation", again))
    a, b = _tree(out), _tree(again)
    assert a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a if k.endswith((".png", ".json", ".txt", ".jpg")) or k == S.COMPLETE_MARKER)
    other = tmp_path / "other"
    S.generate_scenes(_config("segmentation", other, seed=4, train_count=3, val_count=1))
    assert (other / "SegmentationClass" / "train_000000.png").read_bytes() != a["SegmentationClass/train_000000.png"]


def test_scene_i_does_not_depend_on_the_count(seg, tmp_path):
    out, _ = seg
    fewer = tmp_path / "fewer"
    S.generate_scenes(_config("segmentation", fewer, train_count=2, val_count=1))
    for name in ("SegmentationClass/train_000001.png", "SegmentationClass/val_000000.png"):
        assert (fewer / name).read_bytes() == (out / name).read_bytes()


# ------------------------------------------------------------------------------------------------
# detection: COCO layout


def test_coco_layout_and_categories(det):
    out, summary = det
    assert summary["task"] == "detection" and summary["train"]["scenes"] == 10
    for split, count in (("train", 10), ("val", 5)):
        coco = json.loads((out / "annotations" / f"instances_{split}.json").read_text())
        assert coco["categories"] == [{"id": i + 1, "name": n, "supercategory": "fashion"}
                                      for i, n in enumerate(FASHION_MNIST_CLASSES)]
        assert [im["id"] for im in coco["images"]] == list(range(1, count + 1))
        for im in coco["images"]:
            assert (im["width"], im["height"]) == (96, 96)
            with Image.open(out / split / im["file_name"]) as img:
                assert img.size == (96, 96) and img.mode == "RGB"
        ids = [a["id"] for a in coco["annotations"]]
        assert len(ids) == len(set(ids)) and min(ids) >= 1
        assert {a["image_id"] for a in coco["annotations"]} == set(range(1, count + 1))  # every scene has items
    assert not list((out / "annotations").glob(".*"))  # streamed parts removed


def test_coco_boxes_are_tight_around_the_visible_mask(det):
    out, _ = det
    manifest = _manifest(out)
    for split in ("train", "val"):
        coco = json.loads((out / "annotations" / f"instances_{split}.json").read_text())
        union = {}
        for a in coco["annotations"]:
            assert a["iscrowd"] == 0 and 1 <= a["category_id"] <= 10
            mask = S.rle_to_mask(a["segmentation"])
            assert mask.shape == (96, 96) and a["area"] == int(mask.sum()) > 0
            ys, xs = np.nonzero(mask)
            x, y, w, h = a["bbox"]
            assert [x, y, w, h] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert x >= 0 and y >= 0 and x + w <= 96 and y + h <= 96
            seen = union.setdefault(a["image_id"], np.zeros((96, 96), dtype=bool))
            assert not (seen & mask).any()  # visible masks do not overlap: the later item owns the pixels
            seen |= mask
        by_id = {a["id"]: a for a in coco["annotations"]}
        for scene in manifest["scenes"][split]:
            for it in scene["items"]:
                a = by_id[it["annotation_id"]]
                assert (a["category_id"], a["bbox"], a["area"]) == (it["class"] + 1, it["bbox"], it["area"])


def test_coco_loads_in_coco_tools(det):
    """faster-coco-eval (a dependency: COCO's API and evaluation, identical to pycocotools) reads the files and
    decodes every RLE to the item's mask."""
    from faster_coco_eval import COCO

    out, _ = det
    coco = COCO(str(out / "annotations" / "instances_train.json"))
    assert len(coco.getImgIds()) == 10 and len(coco.getCatIds()) == 10
    for ann in coco.loadAnns(coco.getAnnIds()):
        assert (coco.annToMask(ann).astype(bool) == S.rle_to_mask(ann["segmentation"])).all()


def test_detection_is_deterministic(det, tmp_path):
    out, _ = det
    again = tmp_path / "again"
    S.generate_scenes(_config("detection", again))
    for name in ("annotations/instances_train.json", "annotations/instances_val.json", S.MANIFEST,
                 "train/000001.jpg"):
        assert (again / name).read_bytes() == (out / name).read_bytes()


def test_rle_round_trip():
    rng = np.random.default_rng(0)
    for shape in ((5, 7), (1, 1), (64, 33)):
        for density in (0.0, 0.3, 1.0):
            mask = rng.random(shape) < density
            mask[0, 0] = density > 0.5
            rle = S.mask_to_rle(mask)
            assert rle["size"] == list(shape) and sum(rle["counts"]) == mask.size
            assert (S.rle_to_mask(rle) == mask).all()


# ------------------------------------------------------------------------------------------------
# arguments, refusals, interruption


@pytest.mark.parametrize("field, value, option", [
    ("task", "classification", "--task"),
    ("train_count", 0, "--train-count"),
    ("val_count", -1, "--val-count"),
    ("train_count", True, "--train-count"),
    ("size", 63, "--size"),
    ("size", 1025, "--size"),
    ("size", 128.0, "--size"),
    ("seed", -1, "--seed"),
    ("max_items", 0, "--max-items"),
    ("max_items", 13, "--max-items"),
    ("out", "", "--out"),
])
def test_bad_arguments_are_refused_in_one_line(tmp_path, field, value, option):
    kw = {"task": "segmentation", "out": str(tmp_path / "x"), field: value}
    with pytest.raises(UsageError, match="^" + option) as info:
        S.generate_scenes(S.ScenesConfig(**kw))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "x").exists()


def test_non_empty_or_file_out_is_refused(tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match=r"^--out .*full is not empty"):
        S.generate_scenes(_config("segmentation", full))
    assert [p.name for p in full.iterdir()] == ["keep.txt"]
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(UsageError, match="is not a folder"):
        S.generate_scenes(_config("detection", afile))


def test_interrupted_run_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    real = S.compose
    calls = {"n": 0}

    def failing(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(S, "compose", failing)
    out = tmp_path / "ds"
    with pytest.raises(KeyboardInterrupt):
        S.generate_scenes(_config("detection", out))
    assert list(tmp_path.iterdir()) == []


def test_stale_staging_of_a_dead_run_is_removed(tmp_path):
    dead_pid = 2 ** 22 + 1  # above any pid_max: no such process
    stale = tmp_path / f".ds.{dead_pid}.scenes"
    stale.mkdir()
    (stale / "half.jpg").write_bytes(b"x")
    S.generate_scenes(_config("segmentation", tmp_path / "ds", train_count=1, val_count=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_missing_fashion_mnist_writes_nothing(tmp_path):
    with pytest.raises(DataError, match="Fashion-MNIST not found"):
        S.generate_scenes(_config("segmentation", tmp_path / "ds", data_dir=str(tmp_path / "nothing")))
    assert not (tmp_path / "ds").exists()


def test_config_fields_are_cli_options():
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(S.ScenesConfig)}
    assert set(fields) >= {"task", "out", "train_count", "val_count", "size", "seed", "max_items"}
    assert all(f.metadata["cli"]["help"] for f in fields.values())
    assert fields["task"].metadata["cli"]["choices"] == ["segmentation", "detection"]
    assert fields["train_count"].metadata["cli"]["type"] is S.positive_int
    cfg = S.ScenesConfig(task="detection", out="x")
    assert (cfg.train_count, cfg.val_count, cfg.size, cfg.seed, cfg.max_items) == (2000, 500, 128, 0, 6)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.size = 64  # type: ignore[misc]


# ------------------------------------------------------------------------------------------------
# the cache the dense tasks default to


def test_scenes_cache_generates_once_reuses_and_repairs(tmp_path, monkeypatch):
    kw = {"size": 64, "train_count": 2, "val_count": 1}
    path = S.scenes_cache("segmentation", tmp_path, **kw)
    assert path == tmp_path / "scenes" / "segmentation-64-0-2-1" and (path / S.COMPLETE_MARKER).is_file()

    def boom(config):
        raise AssertionError("regenerated a complete cache")

    with monkeypatch.context() as m:
        m.setattr(S, "generate_scenes", boom)
        assert S.scenes_cache("segmentation", tmp_path, **kw) == path
    (path / S.COMPLETE_MARKER).unlink()  # as if killed before the marker (or an older layout)
    (path / "JPEGImages" / "train_000000.jpg").unlink()
    assert S.scenes_cache("segmentation", tmp_path, **kw) == path
    assert (path / S.COMPLETE_MARKER).is_file() and (path / "JPEGImages" / "train_000000.jpg").is_file()


def test_scenes_home_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert S.scenes_home() == Path(os.path.expanduser("~")) / ".cache" / "mobilecnn"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert S.scenes_home() == tmp_path / "xdg" / "mobilecnn"
    monkeypatch.setenv(S.HOME_ENV, str(tmp_path / "home"))
    assert S.scenes_home() == tmp_path / "home"
    assert S.scenes_home(tmp_path / "root") == tmp_path / "root"
    with pytest.raises(UsageError, match="^--task"):
        S.scenes_cache("classification", tmp_path)
