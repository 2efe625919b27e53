"""Tests of mobilecnn.data: real Fashion-MNIST, image folders made from real photos, fake CIFAR files."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from mobilecnn.data import (
    DATA_DIR_ENV,
    DEFAULT_FASHION_MNIST_DIR,
    FASHION_MNIST_CLASSES,
    Batches,
    DataError,
    FolderBatches,
    TensorBatches,
    load_data,
    scan_image_folder,
)

FMNIST = Path(DEFAULT_FASHION_MNIST_DIR)
needs_fmnist = pytest.mark.skipif(
    not (FMNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST is not installed in {FMNIST} (apt-get install dataset-fashion-mnist)")


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)


def _collect(loader: Batches, epoch: int = 0, start_step: int = 0):
    return list(loader.batches(epoch, start_step))


def _tagged(n: int = 103, c: int = 1, r: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose labels are their index, so coverage and sharding can be checked exactly."""
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (n, c, r, r), dtype=torch.uint8, generator=g), torch.arange(n)


# ------------------------------------------------------------------------------------------------
# real Fashion-MNIST


@needs_fmnist
def test_fashion_mnist_shapes_stats_and_info():
    train, val, info = load_data("fashion-mnist", batch_size=64)
    assert isinstance(train, Batches) and isinstance(val, Batches)
    assert (info.name, info.num_classes, info.in_chans, info.resolution) == ("fashion-mnist", 10, 1, 32)
    assert info.class_names == FASHION_MNIST_CLASSES and info.class_names[0] == "T-shirt/top"
    assert (info.train_size, info.val_size) == (60000, 10000)
    assert info.mean[0] == pytest.approx(0.2860, abs=5e-4) and info.std[0] == pytest.approx(0.3530, abs=5e-4)
    assert json.loads(json.dumps(info.to_dict()))["mean"] == [info.mean[0]]
    assert len(train) == 60000 // 64 and len(val) == -(-10000 // 256)  # eval batch defaults to max(bs, 256)
    x, y = next(train.batches(0))
    assert x.shape == (64, 1, 32, 32) and x.dtype == torch.float32
    assert y.shape == (64,) and y.dtype == torch.int64 and 0 <= int(y.min()) and int(y.max()) <= 9
    xv, _ = next(val.batches(0))
    assert xv.shape == (256, 1, 32, 32)
    assert abs(float(xv.mean())) < 0.1 and float(xv.std()) == pytest.approx(1.0, abs=0.1)  # normalised
    _, _, info28 = load_data(resolution=28, batch_size=64)
    assert info28.resolution == 28 and next(load_data(resolution=28)[1].batches(0))[0].shape[-1] == 28


@needs_fmnist
def test_fashion_mnist_determinism_and_resume():
    a, _, _ = load_data(batch_size=100, seed=3, subset=1000)
    b, _, _ = load_data(batch_size=100, seed=3, subset=1000)
    full_a, full_b = _collect(a, 1), _collect(b, 1)
    assert len(full_a) == 10
    for (xa, ya), (xb, yb) in zip(full_a, full_b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    resumed = _collect(a, 1, start_step=7)
    assert len(resumed) == 3
    for (xr, yr), (xf, yf) in zip(resumed, full_a[7:]):
        assert torch.equal(xr, xf) and torch.equal(yr, yf)
    other = _collect(a, 2)
    assert not torch.equal(other[0][1], full_a[0][1])  # a new epoch reshuffles
    c, _, _ = load_data(batch_size=100, seed=4, subset=1000)
    assert not torch.equal(_collect(c, 1)[0][0], full_a[0][0])
    assert _collect(a, 1, start_step=len(a)) == []
    with pytest.raises(ValueError):
        _collect(a, 1, start_step=len(a) + 1)


@needs_fmnist
def test_fashion_mnist_subset_and_batch_checks():
    t1, v1, i1 = load_data(batch_size=50, subset=300, val_subset=120, seed=1)
    t2, _, _ = load_data(batch_size=50, subset=300, seed=2)
    assert (i1.train_size, i1.val_size) == (300, 120) and len(t1) == 6 and len(v1) == 1
    assert not torch.equal(t1.images, t2.images)  # the subset depends on the seed
    assert load_data(batch_size=50, subset=10**9)[2].train_size == 60000  # larger than the data: all of it
    with pytest.raises(DataError, match=r"batch size 512 is larger than the 300 training images; "
                                        r"use --batch-size <= 300"):
        load_data(batch_size=512, subset=300)
    with pytest.raises(DataError, match=r"256 x 2 processes.*<= 150"):
        load_data(batch_size=256, subset=300, world_size=2)
    with pytest.raises(DataError, match="unknown dataset 'imagenet'.*fashion-mnist.*cifar10"):
        load_data("imagenet")
    with pytest.raises(DataError, match="dataset folder .*no/such/dir does not exist"):
        load_data("./no/such/dir")
    with pytest.raises(DataError, match="needs .* GiB in memory; use --resolution <= 64"):
        load_data(resolution=512)


@needs_fmnist
def test_fashion_mnist_eval_and_sharding():
    _, val, info = load_data(batch_size=64, val_subset=500, eval_batch_size=128)
    xs = torch.cat([x for x, _ in val.batches(0)])
    expected = (val.images.float() / 255 - info.mean[0]) / info.std[0]
    assert xs.shape[0] == 500 and torch.allclose(xs, expected, atol=1e-6)  # in order, once, no augmentation
    shards = [load_data(batch_size=64, val_subset=500, eval_batch_size=128, rank=r, world_size=2)[1]
              for r in range(2)]
    assert torch.allclose(torch.cat([x for s in shards for x, _ in s.batches(0)]), expected, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# TensorBatches on tagged data


def test_tensor_batches_train_sharding_is_disjoint_and_balanced():
    images, labels = _tagged(103)
    ranks = [TensorBatches(images, labels, 10, train=True, mean=[0.5], std=[0.25], seed=7, rank=r,
                           world_size=2) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 5  # 10 full batches shared by 2 ranks, last partial dropped
    for epoch in (0, 1):
        seen = torch.cat([y for r in ranks for _, y in r.batches(epoch)])
        assert seen.numel() == 100 and seen.unique().numel() == 100
    single = TensorBatches(images, labels, 10, train=True, mean=[0.5], std=[0.25], seed=7)
    assert len(single) == 10 and torch.cat([y for _, y in single.batches(0)]).unique().numel() == 100


def test_tensor_batches_eval_covers_every_sample_once():
    images, labels = _tagged(103)
    for world_size in (1, 2, 3):
        got = [y for r in range(world_size)
               for _, y in TensorBatches(images, labels, 16, train=False, mean=[0.5], std=[0.25], rank=r,
                                         world_size=world_size).batches(5)]
        assert torch.equal(torch.cat(got), labels)  # partition, no duplicates, last partial batch kept


def test_augmentation_is_crop_and_flip_of_the_original():
    images, labels = _tagged(64, c=3, r=12)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    plain = TensorBatches(images, labels, 32, train=True, mean=mean, std=std, seed=2, pad=0, flip=False)
    aug = TensorBatches(images, labels, 32, train=True, mean=mean, std=std, seed=2, pad=4, flip=True,
                        channels_last=True)
    (xp, yp), (xa, ya) = next(plain.batches(3)), next(aug.batches(3))
    assert torch.equal(yp, ya) and not torch.equal(xp, xa)  # same samples, different pixels
    assert xa.is_contiguous(memory_format=torch.channels_last)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    assert bool(((xa >= -m / s - 1e-5) & (xa <= (1 - m) / s + 1e-5)).all())
    raw = torch.round((xa * s + m) * 255).to(torch.uint8)
    padded = torch.nn.functional.pad(images[ya], (4, 4, 4, 4))
    for i in range(raw.shape[0]):  # every output is some crop of the padded image, possibly flipped
        crops = [c for dy in range(9) for dx in range(9)
                 for c in (padded[i, :, dy:dy + 12, dx:dx + 12], padded[i, :, dy:dy + 12, dx:dx + 12].flip(-1))]
        assert any(torch.equal(raw[i], c) for c in crops)


def test_tensor_batches_on_device_matches_cpu():
    images, labels = _tagged(40, c=3, r=8)
    cpu = TensorBatches(images, labels, 8, train=True, mean=[0.5], std=[0.5], seed=1)
    dev = TensorBatches(images, labels, 8, train=True, mean=[0.5], std=[0.5], seed=1, device="cpu")
    for (a, ya), (b, yb) in zip(cpu.batches(0), dev.batches(0)):
        assert torch.equal(a, b) and torch.equal(ya, yb)


# ------------------------------------------------------------------------------------------------
# Fashion-MNIST files: missing, corrupt


def _write_idx(path: Path, arr: np.ndarray, magic: int, cut: int = 0) -> None:
    raw = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape) + arr.tobytes()
    with gzip.open(path, "wb") as fh:
        fh.write(raw[:len(raw) - cut] if cut else raw)


def _fake_fmnist(root: Path, n_train: int = 40, n_test: int = 12) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), 2051)
        _write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n, dtype=np.uint8), 2049)


def test_missing_fashion_mnist_names_the_fix(tmp_path, monkeypatch):
    with pytest.raises(DataError, match=r"Fashion-MNIST not found in .*apt-get install dataset-fashion-mnist"
                                        r".*--data-dir / set MOBILECNN_DATA_DIR"):
        load_data(data_dir=str(tmp_path))
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "elsewhere"))
    with pytest.raises(DataError, match="elsewhere"):
        load_data()


def test_fake_idx_files_and_env_override(tmp_path, monkeypatch):
    _fake_fmnist(tmp_path)
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    train, val, info = load_data(batch_size=8, resolution=16)
    assert (info.train_size, info.val_size, info.resolution) == (40, 12, 16)
    assert next(train.batches(0))[0].shape == (8, 1, 16, 16)


@pytest.mark.parametrize("damage", ["truncated", "magic", "gzip"])
def test_corrupt_idx_file_is_named(tmp_path, damage):
    _fake_fmnist(tmp_path)
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    if damage == "truncated":
        _write_idx(bad, np.zeros((40, 28, 28), np.uint8), 2051, cut=100)
    elif damage == "magic":
        _write_idx(bad, np.zeros((40, 28, 28), np.uint8), 2049)
    else:
        bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        load_data(data_dir=str(tmp_path), batch_size=8)


# ------------------------------------------------------------------------------------------------
# image folders built from real photos


def _save(img, path: Path, mode: str | None = None, size: int = 96, **kw) -> None:
    from PIL import Image

    im = Image.fromarray(img)
    im.thumbnail((size, size))
    if mode == "I;16":
        im = Image.fromarray(np.asarray(im.convert("L"), dtype=np.uint16) * 257)
    elif mode == "P":
        im = im.convert("P", palette=Image.Palette.ADAPTIVE)
    elif mode:
        im = im.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, **kw)


@pytest.fixture(scope="module")
def photo_tree(tmp_path_factory) -> Path:
    skd = pytest.importorskip("skimage.data")
    cat, coffee, astro, rocket = skd.chelsea(), skd.coffee(), skd.astronaut(), skd.rocket()
    root = tmp_path_factory.mktemp("photos")
    t, v = root / "train", root / "val"
    _save(cat, t / "cat/a.jpg", size=120)
    _save(cat, t / "cat/b.png", "L", size=70)
    _save(cat, t / "cat/c.png", "RGBA", size=64)
    _save(cat, t / "cat/d.gif", "P", size=80)
    _save(cat, t / "cat/sub/e.JPG", "CMYK", size=100)
    (t / "cat/broken.jpg").write_bytes(os.urandom(2000))
    (t / "cat/empty.png").write_bytes(b"")
    _save(coffee, t / "coffee/a.png", size=90)
    _save(coffee, t / "coffee/b16.png", "I;16", size=60)
    _save(coffee, t / "coffee/c.tif", size=50)
    _save(coffee, t / "coffee/d.bmp", size=72)
    _save(coffee, t / "coffee/e.webp", size=110)
    _save(astro, t / "space/a.jpeg", size=128)
    _save(rocket, t / "space/b.jpg", size=96)
    _save(astro, t / "space/c.png", "P", size=40)
    _save(rocket, t / "space/d.jpg", "L", size=80)
    (t / "space/notes.txt").write_text("not an image, ignored")
    _save(cat, v / "cat/a.jpg", size=100)
    _save(coffee, v / "coffee/a.jpg", size=100)
    _save(rocket, v / "space/a.png", size=100)
    _save(astro, v / "space/b.jpg", "L", size=100)
    return root


def test_folder_skip_mode_counts_and_warns(photo_tree):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train, val, info = load_data(str(photo_tree), resolution=32, batch_size=4, workers=0)
    msgs = [str(w.message) for w in caught if "unreadable" in str(w.message)]
    assert len(msgs) == 1 and "skipped 2 unreadable" in msgs[0] and "broken.jpg" in msgs[0]
    assert sorted(Path(p).name for p in train.skipped) == ["broken.jpg", "empty.png"] and val.skipped == []
    assert info.name == f"folder:{photo_tree.resolve()}" and info.class_names == ["cat", "coffee", "space"]
    assert (info.num_classes, info.in_chans, info.resolution) == (3, 3, 32)
    assert (info.train_size, info.val_size) == (14, 4) and len(train) == 3 and len(val) == 1
    assert all(0.05 < m < 0.95 for m in info.mean) and all(0.05 < s < 0.5 for s in info.std)
    for x, y in train.batches(0):
        assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    xv, yv = next(val.batches(0))
    assert xv.shape == (4, 3, 32, 32) and yv.tolist() == [0, 1, 2, 2]
    with pytest.warns(UserWarning, match="skipped 2 unreadable"):
        gray = load_data(str(photo_tree), resolution=24, batch_size=4, workers=0, grayscale=True)
    assert gray[2].in_chans == 1 and next(gray[0].batches(0))[0].shape == (4, 1, 24, 24)


def test_folder_error_mode_names_the_file(photo_tree):
    with pytest.raises(DataError, match=r"unreadable image .*(broken\.jpg|empty\.png).*--on-corrupt skip"):
        load_data(str(photo_tree), resolution=32, batch_size=4, on_corrupt="error", workers=0)


@pytest.mark.filterwarnings("ignore:skipped 2 unreadable")
def test_folder_batches_are_deterministic_and_resumable(photo_tree):
    train, _, _ = load_data(str(photo_tree), resolution=32, batch_size=4, workers=0, seed=5)
    state = torch.get_rng_state()
    full = _collect(train, 2)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched
    again = _collect(train, 2)
    resumed = _collect(train, 2, start_step=2)
    assert len(full) == 3 and len(resumed) == 1
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full, again))
    assert torch.equal(resumed[0][0], full[2][0]) and torch.equal(resumed[0][1], full[2][1])
    assert not torch.equal(_collect(train, 3)[0][0], full[0][0])
    train.workers = 2  # decoding in worker processes gives the very same batches
    in_workers = _collect(train, 2)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full, in_workers))


@pytest.mark.filterwarnings("ignore:skipped 2 unreadable")
def test_folder_sharding(photo_tree):
    parts = [load_data(str(photo_tree), resolution=16, batch_size=3, eval_batch_size=3, workers=0, rank=r,
                       world_size=2) for r in range(2)]
    assert len(parts[0][0]) == len(parts[1][0]) == 2  # 14 // 3 = 4 full batches over 2 ranks
    vals = [y for p in parts for _, y in p[1].batches(0)]
    assert torch.cat(vals).tolist() == [0, 1, 2, 2]


def test_folder_decode_failure_after_verify(tmp_path, photo_tree):
    good = photo_tree / "train/cat/a.jpg"
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(good.read_bytes()[:good.stat().st_size // 2])  # passes verify(), fails to decode
    samples = [(str(good), 0), (str(trunc), 1)]
    kw = dict(train=False, resolution=16, mean=[0.5], std=[0.5], workers=0)
    with pytest.warns(UserWarning, match="trunc.jpg"):
        out = _collect(FolderBatches(samples, 2, **kw))
    assert out[0][1].tolist() == [0, 0]  # replaced by the next readable image
    with pytest.raises(DataError, match="trunc.jpg"):
        _collect(FolderBatches(samples, 2, on_corrupt="error", **kw))


def test_folder_structure_errors(tmp_path):
    from PIL import Image

    def img(p: Path) -> None:
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (200, 10, 10)).save(p)

    for cls in ("a", "b"):
        img(tmp_path / "train" / cls / "x.png")
    img(tmp_path / "val/a/x.png")
    img(tmp_path / "val/c/x.png")
    with pytest.raises(DataError, match=r"only in train/: b; only in val/: c"):
        load_data(str(tmp_path), batch_size=1)
    (tmp_path / "val/c/x.png").unlink()
    (tmp_path / "val/c").rmdir()
    (tmp_path / "val/b").mkdir()
    with pytest.raises(DataError, match=r"class folder .*val/b holds no images"):
        load_data(str(tmp_path), batch_size=1)
    with pytest.raises(DataError, match="lacks train/ and val/"):
        load_data(str(tmp_path / "train"), batch_size=1)
    samples, classes = scan_image_folder(tmp_path / "train")
    assert classes == ["a", "b"] and [c for _, c in samples] == [0, 1]
    img(tmp_path / "val/b/x.png")
    with pytest.raises(DataError, match="batch size 4 is larger than the 2 training images"):
        load_data(str(tmp_path), batch_size=4)


# ------------------------------------------------------------------------------------------------
# CIFAR: fake files in both layouts


def _cifar_arrays(n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, classes, n).astype(np.uint8)


def _py2_pickle(data: np.ndarray, labels: list[int], label_key: str) -> bytes:
    """A pickle laid out like the Python 2 originals (protocol 2, str opcodes, numpy.core globals)."""
    def s(b: bytes) -> bytes:
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<I", len(b)) + b

    def i(v: int) -> bytes:
        return b"J" + struct.pack("<i", v)

    array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + i(0) + b"\x85" + s(b"b") + b"\x87R"
             + b"(" + i(1) + b"(" + b"".join(i(d) for d in data.shape) + b"t"
             + b"cnumpy\ndtype\n" + s(b"u1") + i(0) + i(1) + b"\x87R"
             + b"(" + i(3) + s(b"|") + b"NNN" + i(-1) + i(-1) + i(0) + b"tb"
             + b"\x89" + s(data.tobytes()) + b"tb")
    return (b"\x80\x02}(" + s(b"data") + array + s(label_key.encode()) + b"](" + b"".join(i(v) for v in labels)
            + b"eu.")


def test_cifar10_binary_layout(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    train_x, train_y = [], []
    for k in range(1, 6):
        x, y = _cifar_arrays(4, 10, k)
        (folder / f"data_batch_{k}.bin").write_bytes(np.concatenate([y[:, None], x], 1).tobytes())
        train_x.append(x), train_y.append(y)
    x, y = _cifar_arrays(6, 10, 9)
    (folder / "test_batch.bin").write_bytes(np.concatenate([y[:, None], x], 1).tobytes())
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta.txt").write_text("\n".join(names) + "\n\n")
    train, val, info = load_data("cifar10", data_dir=str(tmp_path), batch_size=5, eval_batch_size=4)
    assert (info.name, info.num_classes, info.in_chans, info.train_size, info.val_size) == ("cifar10", 10, 3, 20, 6)
    assert info.class_names == names and len(train) == 4 and len(val) == 2
    xs, ys = zip(*val.batches(0))
    m, s = torch.tensor(info.mean).view(1, 3, 1, 1), torch.tensor(info.std).view(1, 3, 1, 1)
    restored = torch.round((torch.cat(xs) * s + m) * 255).to(torch.uint8)
    assert torch.equal(restored, torch.from_numpy(x.reshape(6, 3, 32, 32)))
    assert torch.cat(ys).tolist() == y.tolist()
    assert sorted(torch.cat([b for _, b in train.batches(0)]).tolist()) == sorted(np.concatenate(train_y).tolist())
    assert info.mean[0] == pytest.approx(np.concatenate(train_x)[:, :1024].mean() / 255)
    gray = load_data("cifar10", data_dir=str(folder), batch_size=5, grayscale=True)  # the layout folder itself
    assert gray[2].in_chans == 1 and next(gray[0].batches(0))[0].shape == (5, 1, 32, 32)
    (folder / "test_batch.bin").write_bytes(np.zeros(3000, np.uint8).tobytes())
    with pytest.raises(DataError, match="test_batch.bin .*truncated"):
        load_data("cifar10", data_dir=str(tmp_path), batch_size=5)


def test_cifar100_binary_and_python_layouts(tmp_path):
    binary = tmp_path / "bin" / "cifar-100-binary"
    binary.mkdir(parents=True)
    x, y = _cifar_arrays(12, 100, 1)
    coarse = (y // 5).astype(np.uint8)
    (binary / "train.bin").write_bytes(np.concatenate([coarse[:, None], y[:, None], x], 1).tobytes())
    (binary / "test.bin").write_bytes(np.concatenate([coarse[:4, None], y[:4, None], x[:4]], 1).tobytes())
    (binary / "fine_label_names.txt").write_text("\n".join(f"c{i}" for i in range(100)))
    _, val_b, info_b = load_data("cifar100", data_dir=str(tmp_path / "bin"), batch_size=4)
    assert info_b.num_classes == 100 and info_b.class_names[7] == "c7" and info_b.train_size == 12
    assert torch.cat([b for _, b in val_b.batches(0)]).tolist() == y[:4].tolist()

    py = tmp_path / "py" / "cifar-100-python"
    py.mkdir(parents=True)
    (py / "train").write_bytes(_py2_pickle(x, y.tolist(), "fine_labels"))
    with open(py / "test", "wb") as fh:  # a Python 3 re-dump (bytes keys, protocol 4) also loads
        pickle.dump({b"data": x[:4], b"fine_labels": y[:4].tolist(), b"coarse_labels": coarse[:4].tolist()},
                    fh, protocol=4)
    with open(py / "meta", "wb") as fh:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, fh, protocol=4)
    _, val_p, info_p = load_data("cifar100", data_dir=str(tmp_path / "py"), batch_size=4)
    assert info_p.to_dict() == info_b.to_dict() | {"name": "cifar100"}
    for (xa, ya), (xb, yb) in zip(val_p.batches(0), val_b.batches(0)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_cifar10_python_layout(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for k, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        x, y = _cifar_arrays(3, 10, k)
        (folder / name).write_bytes(_py2_pickle(x, y.tolist(), "labels"))
    train, val, info = load_data("cifar10", data_dir=str(tmp_path), batch_size=5)
    assert (info.train_size, info.val_size, info.class_names[0]) == (15, 3, "0")  # no meta: numbered classes
    assert next(val.batches(0))[1].tolist() == y.tolist()


def test_missing_cifar_says_no_download(tmp_path):
    with pytest.raises(DataError, match=r"cifar10 not found \(looked in .*no download is possible.*"
                                        r"cifar-10-batches-bin"):
        load_data("cifar10", data_dir=str(tmp_path))


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_restricted_unpickler_refuses_code_execution(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "pwned"
    x, y = _cifar_arrays(2, 10, 0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": x, "labels": y.tolist(), "extra": _Payload(marker)}, fh, protocol=4)
    with pytest.raises(DataError, match=r"refusing to load .*data_batch_1: it references (posix|os)\.system"):
        load_data("cifar10", data_dir=str(tmp_path), batch_size=2)
    assert not marker.exists()  # the payload never ran
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Payload(control), protocol=4))  # plain pickle would have run it
    assert control.exists()
