"""Shared helpers for the weight-import tests (test files cannot import each other under
--import-mode=importlib): real photos, the exactness measure, BN randomisation, Keras helpers."""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

TOL = 1e-4


def _photos_uint8(size: int) -> torch.Tensor:
    """skimage astronaut, chelsea, coffee: central square, resized to ``size``; uint8 (3, 3, size, size) RGB."""
    from skimage import data

    from mobilecnn.data.images import resize_square

    batch = []
    for img in (data.astronaut(), data.chelsea(), data.coffee()):
        t = torch.from_numpy(np.ascontiguousarray(img[..., :3])).permute(2, 0, 1)
        h, w = t.shape[1:]
        s = min(h, w)
        batch.append(resize_square(t[:, (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s], size))
    return torch.stack(batch)


_CACHE: dict[int, torch.Tensor] = {}


def photos(size: int = 224) -> torch.Tensor:
    if size not in _CACHE:
        _CACHE[size] = _photos_uint8(size)
    return _CACHE[size]


def imagenet(x_uint8: torch.Tensor) -> torch.Tensor:
    """torchvision / timm MobileNetV2 normalisation, written out independently of mobilecnn."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x_uint8.float() / 255.0 - mean) / std


def rel_diff(a, b) -> float:
    """max|a-b| / max|b|; also checks that the reference logits depend on the image (a network whose
    random init washed the input out would pass vacuously)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    spread = np.abs(b - b.mean(0, keepdims=True)).max() / np.abs(b).max()
    assert spread > 0.02, f"the reference logits hardly depend on the input (spread {spread:.2e}): test too weak"
    return float(np.abs(a - b).max() / np.abs(b).max())


def randomize_bn_(model: nn.Module, x: torch.Tensor, seed: int = 0) -> nn.Module:
    """Random BN affine parameters; running statistics calibrated on ``x`` (and its mirror), then
    perturbed: BN is neither the identity nor saturating."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            c = m.num_features
            m.weight.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.copy_(torch.randn(c, generator=g) * 0.1)
            m.reset_running_stats()
            m.momentum = None
        model.train()
        model(torch.cat([x, x.flip(-1)]))
        model.eval()
        for m in bns:
            c = m.num_features
            m.momentum = 0.1
            m.running_mean.add_(torch.randn(c, generator=g) * 0.05 * m.running_var.sqrt())
            m.running_var.mul_(torch.rand(c, generator=g) * 0.4 + 0.8)
    return model


@torch.no_grad()
def logits(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    return model.eval()(x).numpy()


def ours_input(weights_path, x_uint8: torch.Tensor) -> torch.Tensor:
    """The input the imported file's own stored preprocessing makes of the photos (the one definition)."""
    import json

    from mobilecnn.data.images import Preprocessing
    from mobilecnn.models.weights_file import read_metadata

    pre = Preprocessing.from_dict(json.loads(read_metadata(weights_path)["data"])["preprocessing"])
    return pre.normalize(x_uint8)


def import_file(path, source, out, *extra) -> dict:
    """``mobilecnn weights import`` through the CLI; returns the sidecar."""
    import json

    from mobilecnn.cli import main

    code = main(["weights", "import", str(path), "--from", source, "--out", str(out), *map(str, extra)])
    assert code == 0
    return json.loads(open(str(out) + ".mobilecnn.json").read())


@pytest.fixture(scope="session")
def wt():
    """The helpers as one namespace."""
    return SimpleNamespace(TOL=TOL, photos=photos, imagenet=imagenet, rel_diff=rel_diff, randomize_bn_=randomize_bn_,
                           logits=logits, ours_input=ours_input, import_file=import_file)


@pytest.fixture(autouse=True)
def _one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="session")
def keras():
    os.environ["KERAS_BACKEND"] = "torch"
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("keras was already imported with another backend")
    return keras
