"""Tests of mobilecnn.data.coco: both COCO layouts, the scenes' files, crowds, box repairs and every bad input."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mobilecnn.data import DEFAULT_FASHION_MNIST_DIR
from mobilecnn.data import coco as COCO
from mobilecnn.data.detection import decode, load_detection
from mobilecnn.data.images import load_image
from mobilecnn.data.names import detection_folder
from mobilecnn.data.scenes import SCENE_CLASSES, ScenesConfig, generate_scenes
from mobilecnn.errors import DataError

FMNIST = Path(DEFAULT_FASHION_MNIST_DIR)
CATS = [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 5, "name": "airplane"}]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    pytest.importorskip("skimage.data")
    if not (FMNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST is not installed in {FMNIST}")
    out = tmp_path_factory.mktemp("det") / "scenes"
    generate_scenes(ScenesConfig(task="detection", out=str(out), train_count=8, val_count=4, size=64, seed=2))
    return out


def _image(path: Path, w: int, h: int, value: int = 90) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), value, dtype=np.uint8)).save(path)


def _doc(images=None, annotations=None, categories=None) -> dict:
    images = [{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
              {"id": 2, "file_name": "b.png", "width": 32, "height": 32}] if images is None else images
    annotations = [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [4, 5, 10, 8], "iscrowd": 0, "area": 80},
                   {"id": 2, "image_id": 1, "category_id": 90, "bbox": [20, 10, 12, 15], "iscrowd": 0}] \
        if annotations is None else annotations
    doc = {"info": {}, "images": images, "annotations": annotations, "categories": CATS if categories is None
           else categories}
    return json.loads(json.dumps(doc))  # a copy: the cases damage it


def _coco(root: Path, year: str = "2017", train: dict | None = None, val: dict | None = None) -> Path:
    """A COCO folder: annotations/instances_{split}{year}.json and {split}{year}/ with every listed image."""
    for split, doc in (("train", train or _doc()), ("val", val or _doc())):
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"instances_{split}{year}.json").write_text(json.dumps(doc))
        (root / f"{split}{year}").mkdir(exist_ok=True)
        for im in doc["images"]:
            _image(root / f"{split}{year}" / im["file_name"], im["width"], im["height"])
    return root


def _refused(root: Path, *named: str) -> str:
    with pytest.raises(DataError) as e:
        load_detection(root, batch_size=1, workers=0, resolution=32)
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg
    for n in named:
        assert n in msg, msg
    return msg


def test_scenes_layout_reads_with_labels_equal_to_the_category_ids(scenes):
    files = COCO.find_coco(scenes)
    assert files["train"] == (scenes / "annotations" / "instances_train.json", scenes / "train")
    split = COCO.read_coco(*files["train"])
    assert split.category_ids == list(range(1, 11)) and [n for _, n in split.categories] == SCENE_CLASSES[1:]
    doc = json.loads(files["train"][0].read_text())
    assert [s.image_id for s in split.samples] == sorted(im["id"] for im in doc["images"])
    first = [a for a in doc["annotations"] if a["image_id"] == split.samples[0].image_id]
    x, y, w, h = first[0]["bbox"]
    assert split.samples[0].boxes[0].tolist() == [x, y, x + w, y + h]
    assert split.samples[0].labels.tolist() == [a["category_id"] for a in first]  # ids 1..10 are the labels
    assert all(v == 0 for v in split.counts.values())
    assert len(COCO.check_images(split.samples, files["train"][0])) == 8


def test_coco2017_layout_maps_sparse_category_ids_to_contiguous_labels(tmp_path):
    root = _coco(tmp_path / "coco")
    train, val, info = load_detection(root, batch_size=1, workers=0, resolution=32)
    assert info.category_ids == [1, 5, 90] and info.num_classes == 4
    assert info.class_names == ["background", "person", "airplane", "toothbrush"]
    assert info.name == f"coco:{root.resolve()}" and info.layout == "coco" and info.task == "detection"
    assert info.val_annotations == str((root / "annotations" / "instances_val2017.json").resolve())
    assert detection_folder(info.name) == str(root.resolve()) == info.source
    s = COCO.read_coco(root / "annotations" / "instances_train2017.json", root / "train2017").samples[0]
    assert s.labels.tolist() == [2, 3] and s.boxes.tolist() == [[4, 5, 14, 13], [20, 10, 32, 25]]


def test_detection_folder_names():
    assert detection_folder(None) is None and detection_folder("scenes") is None
    assert detection_folder("fashion-mnist") is None and detection_folder("data/coco") == "data/coco"


def test_crowds_are_skipped_images_without_boxes_kept_and_boxes_repaired_with_counts(tmp_path):
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 1},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [1, 1, 0, 5]},  # zero width
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, -2]},  # negative height
            {"id": 4, "image_id": 1, "category_id": 1, "bbox": [30, -5, 20, 10]},  # partly outside: clipped
            {"id": 5, "image_id": 1, "category_id": 1, "bbox": [50, 40, 5, 5]},  # entirely outside
            {"id": 6, "image_id": 1, "category_id": 5, "bbox": [2, 3, 4, 5]}]
    root = _coco(tmp_path / "c", "", train=_doc(annotations=anns))
    split = COCO.read_coco(root / "annotations" / "instances_train.json", root / "train")
    assert split.counts == {"crowd": 1, "degenerate": 2, "clipped": 1, "outside": 1}
    a, b = split.samples
    assert a.boxes.tolist() == [[30, 0, 40, 5], [2, 3, 6, 8]] and a.labels.tolist() == [1, 2]
    assert b.boxes.shape == (0, 4) and b.labels.shape == (0,)  # an image without boxes is kept
    _, _, info = load_detection(root, batch_size=1, workers=0, resolution=32)
    assert info.box_counts["train"]["crowd"] == 1 and info.train_size == 2


def _set(doc: dict, key: str, i: int, **fields) -> dict:
    doc[key][i].update(fields)
    return doc


def _without(doc: dict, key: str, i: int, name: str) -> dict:
    del doc[key][i][name]
    return doc


BAD_DOCS = {
    "missing key": (lambda d: {k: v for k, v in d.items() if k != "annotations"}, ["'annotations'"]),
    "list top level": (lambda d: [d], ["JSON list"]),
    "image without width": (lambda d: _without(d, "images", 1, "width"), ["images[1] (id 2)", "'width'"]),
    "annotation without bbox": (lambda d: _without(d, "annotations", 0, "bbox"), ["annotations[0] (id 1)", "'bbox'"]),
    "bbox of 3": (lambda d: _set(d, "annotations", 1, bbox=[1, 2, 3]), ["annotations[1] (id 2)", "bbox"]),
    "bbox nan": (lambda d: _set(d, "annotations", 1, bbox=[1, 2, 3, float("nan")]), ["annotations[1]"]),
    "category without name": (lambda d: _without(d, "categories", 2, "name"), ["categories[2] (id 5)"]),
    "string id": (lambda d: _set(d, "images", 0, id="1"), ["images[0] (id '1')", "integer"]),
    "duplicate image id": (lambda d: _set(d, "images", 1, id=1), ["images[1] (id 1)", "images[0]", "unique"]),
    "duplicate annotation id": (lambda d: _set(d, "annotations", 1, id=1), ["annotations[1] (id 1)", "unique"]),
    "duplicate category id": (lambda d: _set(d, "categories", 1, id=90), ["categories[1] (id 90)", "unique"]),
    "unknown image_id": (lambda d: _set(d, "annotations", 1, image_id=7), ["annotations[1] (id 2)", "image_id 7"]),
    "unknown category_id": (lambda d: _set(d, "annotations", 0, category_id=3), ["annotations[0]", "category_id 3"]),
    "iscrowd 2": (lambda d: _set(d, "annotations", 0, iscrowd=2), ["annotations[0]", "iscrowd 2"]),
    "no categories": (lambda d: {**d, "categories": [], "annotations": []}, ["no categories"]),
    "no images": (lambda d: {**d, "images": [], "annotations": []}, ["lists no images"]),
    "1x1 image": (lambda d: _set(d, "images", 1, width=1, height=1), ["images[1] (id 2)", "b.png", "1x1"]),
    "20000 px image": (lambda d: _set(d, "images", 1, width=20000, height=20000), ["images[1]", "decompression"]),
    "escaping file_name": (lambda d: _set(d, "images", 0, file_name="../a.png"), ["images[0]", "'../a.png'"]),
}


@pytest.mark.parametrize("case", sorted(BAD_DOCS))
def test_bad_json_entries_are_one_line_naming_the_file_and_entry(tmp_path, case):
    damage, named = BAD_DOCS[case]
    root = _coco(tmp_path / "c")
    path = root / "annotations" / "instances_val2017.json"
    path.write_text(json.dumps(damage(_doc())))
    _refused(root, str(path), *named)


@pytest.mark.parametrize("text, named", [("not json at all", "not valid JSON"), ('{"images": [{"id": 1,', "truncated"),
                                         ("[" * 200_000, "nests too deeply"), (b"\xff\xfe\x00{", "")])
def test_unparsable_json_is_refused(tmp_path, text, named):
    root = _coco(tmp_path / "c")
    path = root / "annotations" / "instances_train2017.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    _refused(root, str(path), named)


def test_json_size_is_capped_and_devices_are_refused(tmp_path, monkeypatch):
    root = _coco(tmp_path / "c")
    path = root / "annotations" / "instances_train2017.json"
    monkeypatch.setattr(COCO, "MAX_JSON_BYTES", 100)
    _refused(root, str(path), "larger than 100 bytes")
    monkeypatch.undo()
    if os.path.exists("/dev/zero"):
        path.unlink()
        path.symlink_to("/dev/zero")
        _refused(root, str(path), "not a regular file")


def test_image_files_are_checked_against_the_json(tmp_path):
    root = _coco(tmp_path / "c")
    images = root / "val2017"
    (images / "b.png").unlink()
    _refused(root, str(images / "b.png"), "image id 2", "instances_val2017.json", "missing")
    _image(images / "b.png", 30, 32)
    _refused(root, str(images / "b.png"), "30x32", "says 32x32", "image id 2")
    (images / "b.png").write_bytes(b"not an image")
    _refused(root, str(images / "b.png"), "cannot be read")


def _png_header(path: Path, w: int, h: int) -> None:
    """A PNG whose header claims ``w x h`` (no real pixels: only the header is ever read)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))
                     + chunk(b"IEND", b""))


def test_decompression_bomb_files_are_refused_from_their_header(tmp_path):
    root = _coco(tmp_path / "c")
    _png_header(root / "train2017" / "a.png", 20000, 20000)
    _refused(root, str(root / "train2017" / "a.png"), "decompression-bomb")


def test_missing_layouts_are_named(tmp_path):
    _refused(tmp_path / "nothing", "does not exist")
    (tmp_path / "empty").mkdir()
    _refused(tmp_path / "empty", "not a COCO detection dataset", "instances_train2017.json")
    root = _coco(tmp_path / "c")
    (root / "annotations" / "instances_val2017.json").unlink()
    _refused(root, "instances_val2017.json", "is missing")
    root = _coco(tmp_path / "d", "")
    (root / "val" / "a.png").unlink()
    (root / "val" / "b.png").unlink()
    (root / "val").rmdir()
    _refused(root, str(root / "val"), "image folder")


def test_train_and_val_need_the_same_categories(tmp_path):
    cats = [dict(c) for c in CATS]
    cats[1]["name"] = "human"
    root = _coco(tmp_path / "c", val=_doc(categories=cats))
    _refused(root, "category id 1", "'human'", "'person'", "instances_val2017.json")


@pytest.mark.parametrize("orientation", [2, 3, 4, 5, 6, 7, 8])
def test_exif_rotation_follows_the_json_frame(tmp_path, orientation):
    rng = np.random.default_rng(orientation)
    raw = Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8))  # 40 wide, 24 high
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 24}]
    root = _coco(tmp_path / "c", train=_doc(images=stored, annotations=[]))
    path = root / "train2017" / "a.jpg"
    raw.save(path, exif=exif, quality=95)
    split = COCO.read_coco(root / "annotations" / "instances_train2017.json", root / "train2017")
    s = COCO.check_images(split.samples, split.annotations)[0]
    with Image.open(path) as im:  # the stored pixels, as COCO's tools read them
        stored_pixels = torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)
    assert s.undo_exif == orientation and torch.equal(decode(s), stored_pixels)
    if orientation >= 5:  # a JSON giving the upright size: the boxes are in the displayed frame
        upright = COCO.CocoSample(str(path), 1, (24, 40), s.boxes, s.labels)
        assert COCO._check_image(upright, "entry").undo_exif == 1
        assert torch.equal(decode(upright), load_image(path, 3))
        with pytest.raises(DataError, match="40x24 \\(24x40 upright\\) but entry says 30x30"):
            COCO._check_image(COCO.CocoSample(str(path), 1, (30, 30), s.boxes, s.labels), "entry")
