"""megvii ShuffleNet-Series ShuffleNetV1: a checkpoint in their key layout and channel order (random
weights, ``{'state_dict': {'module.' + key: ...}}`` as their train.py saves it from nn.DataParallel) is
imported with a channel permutation that makes our model, with the paper's shuffle, compute the function
of an independent forward pass in their order (shuffle after the depthwise conv) written here."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mobilecnn import create_model
from mobilecnn.errors import CheckpointError
from mobilecnn.weights import convert_file
from mobilecnn.weights.megvii import unit_permutation

#: megvii ShuffleNetV1/network.py stage_out_channels[1:] (stem, stage 2, 3, 4)
CHANNELS = {(3, "0.5x"): (12, 120, 240, 480), (3, "1.0x"): (24, 240, 480, 960), (3, "1.5x"): (24, 360, 720, 1440),
            (3, "2.0x"): (48, 480, 960, 1920), (8, "0.5x"): (16, 192, 384, 768), (8, "1.0x"): (24, 384, 768, 1536),
            (8, "1.5x"): (24, 576, 1152, 2304), (8, "2.0x"): (48, 768, 1536, 3072)}


def megvii_state_dict(groups: int, size: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in the key layout of megvii's ShuffleNetV1 (blocks.py / network.py)."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def conv(key, shape):
        sd[key] = torch.randn(*shape, generator=g) * (2.0 / (shape[1] * shape[2] * shape[3])) ** 0.5

    def bn(key, c):
        sd[f"{key}.weight"] = torch.rand(c, generator=g) + 0.5
        sd[f"{key}.bias"] = torch.randn(c, generator=g) * 0.2
        sd[f"{key}.running_mean"] = torch.randn(c, generator=g) * 0.2
        sd[f"{key}.running_var"] = torch.rand(c, generator=g) * 1.5 + 0.5
        sd[f"{key}.num_batches_tracked"] = torch.tensor(1000)

    stem, *stages = CHANNELS[(groups, size)]
    conv("first_conv.0.weight", (stem, 3, 3, 3))
    bn("first_conv.1", stem)
    inp, u = stem, 0
    for s, (oup, repeat) in enumerate(zip(stages, (4, 8, 4))):
        for i in range(repeat):
            mid, outputs = oup // 4, (oup - inp if i == 0 else oup)
            p = f"features.{u}"
            conv(f"{p}.branch_main_1.0.weight", (mid, inp // (1 if s == 0 and i == 0 else groups), 1, 1))
            bn(f"{p}.branch_main_1.1", mid)
            conv(f"{p}.branch_main_1.3.weight", (mid, 1, 3, 3))
            bn(f"{p}.branch_main_1.4", mid)
            conv(f"{p}.branch_main_2.0.weight", (outputs, mid // groups, 1, 1))
            bn(f"{p}.branch_main_2.1", outputs)
            inp, u = oup, u + 1
    sd["classifier.0.weight"] = torch.randn(1000, inp, generator=g) * 0.01
    return sd


def megvii_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, groups: int) -> torch.Tensor:
    """Their order: shuffle (view (C/g, g) -> (g, C/g)) AFTER the depthwise conv, also in the first unit
    whose first 1x1 is ungrouped; AvgPool2d(3, 2, 1) shortcut; AvgPool2d(7) head; Linear without bias."""

    def bn(t, p):
        return F.batch_norm(t, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                            False, 0.0, 1e-5)

    x = F.max_pool2d(F.relu(bn(F.conv2d(x, sd["first_conv.0.weight"], stride=2, padding=1), "first_conv.1")), 3, 2, 1)
    u = 0
    for s, repeat in enumerate((4, 8, 4)):
        for i in range(repeat):
            p, stride = f"features.{u}", (2 if i == 0 else 1)
            y = F.conv2d(x, sd[f"{p}.branch_main_1.0.weight"], groups=1 if s == 0 and i == 0 else groups)
            y = F.relu(bn(y, f"{p}.branch_main_1.1"))
            y = bn(F.conv2d(y, sd[f"{p}.branch_main_1.3.weight"], stride=stride, padding=1, groups=y.shape[1]),
                   f"{p}.branch_main_1.4")
            b, c, h, w = y.shape
            y = y.reshape(b, c // groups, groups, h, w).permute(0, 2, 1, 3, 4).reshape(b, c, h, w)
            y = bn(F.conv2d(y, sd[f"{p}.branch_main_2.0.weight"], groups=groups), f"{p}.branch_main_2.1")
            x = F.relu(x + y) if stride == 1 else torch.cat((F.avg_pool2d(x, 3, 2, 1), F.relu(y)), 1)
            u += 1
    return F.linear(F.avg_pool2d(x, 7).flatten(1), sd["classifier.0.weight"])


def _checkpoint(tmp_path, groups, size):
    sd = megvii_state_dict(groups, size)
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    return sd, path


ALL_EIGHT = [(g, s) for g in (3, 8) for s in ("0.5x", "1.0x", "1.5x", "2.0x")]
#: No channel permutation of the paper's unit reproduces these (test_permutation_rule): shuffle="megvii".
MEGVII_ORDER = {(8, "0.5x"), (8, "1.0x"), (8, "1.5x")}


@pytest.mark.parametrize("groups,size", ALL_EIGHT)
def test_megvii_shufflenet_v1_exact(groups, size, tmp_path, wt):
    """Every one of megvii's eight ShuffleNetV1 checkpoints imports to logits within the tolerance of an
    independent forward pass in their layout."""
    sd, path = _checkpoint(tmp_path, groups, size)
    out = tmp_path / "w.safetensors"
    side = wt.import_file(path, "megvii", out)
    name = f"shufflenet_v1_g{groups}_x{size[:-1].replace('.', '_')}"
    assert side["model"] == name and "MIT" in side["license"]
    assert side["model_kwargs"] == ({"shuffle": "megvii"} if (groups, size) in MEGVII_ORDER else {})
    pre = side["data"]["preprocessing"]
    assert (pre["channel_order"], pre["scale"], pre["mean"], pre["std"]) == ("BGR", 1.0, [0.0] * 3, [1.0] * 3)
    assert int(pre["resolution"] / pre["crop_fraction"]) == 256 and pre["resolution"] == 224
    x8 = wt.photos(224)
    x = wt.ours_input(out, x8)
    assert torch.equal(x, x8.flip(1).float())  # what their ToBGRTensor makes: BGR, 0-255, no normalisation
    ours = create_model(name, weights=out)
    assert torch.equal(ours.classifier.bias, torch.zeros(1000))
    with torch.no_grad():
        ref = megvii_forward(sd, x8.flip(1).float(), groups).numpy()
    assert wt.rel_diff(wt.logits(ours, x), ref) <= wt.TOL
    if (groups, size) == (3, "0.5x"):  # the same tensors without the permutation: another function
        naive = dict(ours.state_dict())
        for u in range(16):
            stage, index = (0, u) if u < 4 else ((1, u - 4) if u < 12 else (2, u - 12))
            q, p = f"features.{2 + stage}.{index}", f"features.{u}"
            naive[f"{q}.compress.conv.weight"] = sd[f"{p}.branch_main_1.0.weight"]
            naive[f"{q}.depthwise.conv.weight"] = sd[f"{p}.branch_main_1.3.weight"]
            naive[f"{q}.expand.conv.weight"] = sd[f"{p}.branch_main_2.0.weight"]
            for k in ("weight", "bias", "running_mean", "running_var"):
                naive[f"{q}.compress.bn.{k}"] = sd[f"{p}.branch_main_1.1.{k}"]
                naive[f"{q}.depthwise.bn.{k}"] = sd[f"{p}.branch_main_1.4.{k}"]
        model = create_model(name)
        model.load_state_dict(naive)
        assert wt.rel_diff(wt.logits(model, x), ref) > 1e-2


def test_the_megvii_order_is_recorded_counted_and_exported(tmp_path, wt):
    from mobilecnn.analysis.complexity import profile
    from mobilecnn.deploy.export import ExportConfig, ExportImages, export_model

    _, path = _checkpoint(tmp_path, 8, "1.0x")
    out = tmp_path / "w.safetensors"
    wt.import_file(path, "megvii", out)
    ours = create_model("shufflenet_v1_g8_x1_0", weights=out)
    assert ours.model_kwargs == {"shuffle": "megvii"}
    paper = create_model("shufflenet_v1_g8_x1_0")
    assert profile(ours, 224).macs == profile(paper, 224).macs  # a permutation costs no multiply-add
    with pytest.raises(ValueError, match="accepted: True .*False .*'megvii'"):
        create_model("shufflenet_v1_g8_x1_0", shuffle="after")
    x = wt.ours_input(out, wt.photos(224))
    report = export_model(ours, tmp_path / "m.onnx", ExportImages(x[:1], x, None, None, None),
                          ExportConfig("onnx", "fp32"))
    assert report.rel_diff < 1e-4 and report.top1_agreement == 1.0


@pytest.mark.parametrize("g", [2, 3, 4, 8])
def test_permutation_rule(g):
    """A match exists iff n mod g in {0, 1, g-1} (n = C/g), always for the ungrouped first unit; when it
    exists both grouped convs stay grouped and it is a bijection."""
    for n in range(1, 40):
        for first in (g, 1):
            res = unit_permutation(g * n, g, first)
            assert (res is not None) == (first == 1 or n % g in (0, 1, g - 1)), (g, n, first)
            if res is None:
                continue
            src, pos = res
            mid, pw1_size = g * n, g * n // first
            assert sorted(src) == list(range(mid)) and sorted(pos) == list(range(mid))
            for kp in range(mid):
                assert src[kp] == (pos[kp] % n) * g + pos[kp] // n  # their shuffle puts src[kp] at pos[kp]
                assert ((kp % g) * n + kp // g) // pw1_size == src[kp] // pw1_size  # pw1 stays grouped
                assert kp // n == pos[kp] // n  # pw2 stays grouped
