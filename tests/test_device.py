"""--device: resolution and its errors, the on-device data paths run with the CPU as the device, resume
across devices, --resume auto. GPU-only tests are marked ``gpu`` (skipped without CUDA; gpu_check.sh runs them)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mobilecnn.cli import main
from mobilecnn.data import load_data
from mobilecnn.data.folder import FolderBatches
from mobilecnn.device import amp_dtype, available_devices, grad_scaler, resolve_device
from mobilecnn.errors import TrainError, UsageError
from mobilecnn.runs.checkpoints import latest_checkpoint
from mobilecnn.train import TrainConfig, train

FASHION = Path(os.environ.get("MOBILECNN_DATA_DIR", "/usr/share/datasets/fashion-mnist"))
needs_fashion = pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").is_file(),
                                   reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
HAS_CUDA = torch.cuda.is_available()


def tiny(out: Path, **kw) -> TrainConfig:
    base = dict(model="shufflenet_v1_g3_x0_25", out=str(out), subset=512, val_subset=300, batch_size=64, epochs=1,
                checkpoint_every=3, threads=1, seed=5)
    base.update(kw)
    return TrainConfig(**base)


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(latest_checkpoint(run) / "model.safetensors"))


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


# ------------------------------------------------------------------------------------------ resolution


def test_resolve_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    auto = resolve_device("auto")
    expected = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    assert auto.type == (expected.type if expected is not None else "cpu")
    assert resolve_device(None) == auto
    assert "cpu" in available_devices()


@pytest.mark.skipif(HAS_CUDA, reason="checks the message on a machine without CUDA")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cuda_is_a_one_line_error_naming_what_is_available(spec, capsys, tmp_path):
    with pytest.raises(UsageError) as info:
        resolve_device(spec)
    message = str(info.value)
    assert "\n" not in message and f"--device {spec}" in message and "available here: cpu" in message
    # the command line: exit 2, one line, and nothing written
    out = tmp_path / "run"
    assert main(["train", "--model", "shufflenet_v1_g3_x0_25", "--device", spec, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len([line for line in err.splitlines() if line.strip()]) == 1 and "available here: cpu" in err
    assert not out.exists()


@pytest.mark.skipif(HAS_CUDA, reason="checks the message on a machine without CUDA")
def test_eval_and_predict_take_device(tmp_path, capsys):
    from mobilecnn.deploy.predict import load_predictor

    assert main(["eval", str(tmp_path), "--device", "cuda"]) == 2
    assert "available here: cpu" in capsys.readouterr().err
    exported = tmp_path / "model.onnx"
    exported.write_bytes(b"not read")
    with pytest.raises(UsageError, match="runs in its own runtime on the CPU"):
        load_predictor(exported, device="cuda")


@pytest.mark.parametrize("spec", ["tpu", "cuda:x", "cuda:-1", "gpu0"])
def test_unknown_device_lists_the_accepted_forms(spec):
    with pytest.raises(UsageError, match="auto, cpu, cuda, cuda:N, mps"):
        resolve_device(spec)


def test_cuda_resolution_with_gpus_present(monkeypatch):
    """One device per LOCAL_RANK under torchrun (no GPU is touched: only the counting is faked)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(UsageError, match="there are 2 CUDA device"):
        resolve_device("cuda:2")
    with pytest.raises(UsageError, match="--nproc-per-node 2"):
        resolve_device("cuda", local_rank=2)
    with pytest.raises(UsageError, match="LOCAL_RANK"):
        resolve_device("cuda:0", local_rank=1)


def test_amp_choice(monkeypatch):
    assert amp_dtype(torch.device("cpu")) == torch.bfloat16  # what --amp always meant on the CPU
    assert grad_scaler(torch.device("cpu"), amp=True) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert amp_dtype(torch.device("cuda", 0)) == torch.float16  # e.g. a T4 / V100: fp16 + gradient scaler
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert amp_dtype(torch.device("cuda", 0)) == torch.bfloat16


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_deterministic_cuda_loss_equals_cross_entropy(smoothing):
    from mobilecnn.train.losses import SmoothedCrossEntropy

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 10, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 10, (16,), generator=g)
    want = torch.nn.CrossEntropyLoss(label_smoothing=smoothing)(logits, target)
    (gw,) = torch.autograd.grad(want, logits)
    got = SmoothedCrossEntropy(smoothing)(logits, target)
    (gg,) = torch.autograd.grad(got, logits)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(gg, gw)


def test_resume_auto_option_parses():
    from mobilecnn.cli.app import build_parser

    parse = build_parser().parse_args
    assert parse(["train", "--model", "m"]).resume is False
    assert parse(["train", "--model", "m", "--resume"]).resume is True
    assert parse(["train", "--model", "m", "--resume", "--amp"]).resume is True
    assert parse(["train", "--model", "m", "--resume", "auto"]).resume == "auto"
    assert parse(["train", "--model", "m"]).device == "auto"


# --------------------------------------------------------------------- the device data paths, on the CPU


@needs_fashion
def test_in_memory_dataset_on_the_device_path_with_cpu_as_device():
    """The code that keeps Fashion-MNIST on a GPU as uint8 and augments it there, run with device="cpu":
    the same batches as the plain path, the data stored once as uint8 on the device."""
    kw = dict(batch_size=32, subset=256, val_subset=100, seed=2)
    plain, plain_val, _ = load_data("fashion-mnist", **kw)
    dev, dev_val, _ = load_data("fashion-mnist", device="cpu", **kw)
    assert dev.images.dtype == torch.uint8 and dev.images.device.type == "cpu" and dev.device == torch.device("cpu")
    for epoch in (0, 1):
        for (xa, ya), (xb, yb) in zip(plain.batches(epoch), dev.batches(epoch)):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    for (xa, ya), (xb, yb) in zip(plain_val.batches(0), dev_val.batches(0, 0)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def _folder(root: Path, n: int = 12) -> list[tuple[str, int]]:
    from PIL import Image

    samples = []
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        arr = torch.randint(0, 256, (40 + i, 48, 3), generator=g, dtype=torch.uint8).numpy()
        path = root / f"c{i % 2}" / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(path, quality=90)
        samples.append((str(path), i % 2))
    return samples


def test_folder_accelerator_path_with_cpu_as_device(tmp_path):
    """The accelerator path of image folders (one DataLoader with persistent workers across epochs,
    non-blocking copies), forced on with the CPU as the device: the same batches as the plain path."""
    samples = _folder(tmp_path)
    common = dict(train=True, resolution=24, mean=[0.5] * 3, std=[0.25] * 3, seed=1, workers=2, verify=False)
    plain = FolderBatches(samples, 4, **common)
    fast = FolderBatches(samples, 4, device="cpu", **common)
    assert not fast._accelerated
    fast._accelerated = True  # what a CUDA device turns on
    for epoch, start in ((0, 0), (1, 1), (0, 2), (2, 0)):  # persistent workers serve every pass, resumes too
        got = list(fast.batches(epoch, start))
        want = list(plain.batches(epoch, start))
        assert len(got) == len(want) == len(plain) - start
        for (xa, ya), (xb, yb) in zip(want, got):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    first = next(iter(fast.batches(0)))  # an abandoned pass does not disturb the next one
    assert torch.equal(first[0], next(iter(plain.batches(0)))[0])
    assert torch.equal(list(fast.batches(1))[-1][0], list(plain.batches(1))[-1][0])


# ----------------------------------------------------------------------------------- resume and devices


@needs_fashion
def test_device_is_recorded_but_not_part_of_the_identity_resume_across_devices(tmp_path):
    """A run started on one device resumes on another: the checkpoint is device-free (host safetensors)
    and the device is recorded in config.json's settings, not in the identity."""
    reference = tmp_path / "reference"
    train(tiny(reference, device="cpu"))
    out = tmp_path / "moved"
    train(tiny(out, device="cpu", max_steps=4))
    config = json.loads((out / "config.json").read_text())
    assert config["settings"]["device"] == "cpu" and "device" not in config["identity"]
    # pretend the first part ran on a GPU: the identity check must not care
    config["settings"]["device"] = "cuda:0"
    config["config"]["device"] = "cuda"
    (out / "config.json").write_text(json.dumps(config))
    train(tiny(out, device="auto", resume=True))
    assert json.loads((out / "config.json").read_text())["settings"]["device"] == str(resolve_device("auto"))
    assert_same(final_weights(out), final_weights(reference))


@needs_fashion
def test_resume_auto_starts_resumes_and_still_refuses_another_run(tmp_path):
    reference = tmp_path / "reference"
    train(tiny(reference))
    out = tmp_path / "auto"
    train(tiny(out, resume="auto", max_steps=5))  # nothing there: starts
    train(tiny(out, resume="auto"))  # a checkpoint there: resumes
    assert_same(final_weights(out), final_weights(reference))
    with pytest.raises(TrainError, match="different run"):
        train(tiny(out, resume="auto", seed=6))
    with pytest.raises(TrainError, match="--resume"):  # a plain start into it is still refused
        train(tiny(out))


# ---------------------------------------------------------------------------------------- GPU only


@needs_fashion
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (run by benchmarks/gpu_check.sh)")
@pytest.mark.parametrize("amp", [False, True])
def test_gpu_training_keeps_everything_on_the_device(tmp_path, amp):
    out = tmp_path / "gpu"
    result = train(tiny(out, device="cuda", amp=amp, epochs=1))
    config = json.loads((out / "config.json").read_text())
    assert config["settings"]["device"].startswith("cuda")
    assert result["val_top1"] > 10
    # the in-memory dataset lives on the GPU as uint8
    loader, _, _ = load_data("fashion-mnist", subset=256, batch_size=32, device="cuda")
    assert loader.images.is_cuda and loader.images.dtype == torch.uint8
    x, y = next(iter(loader.batches(0)))
    assert x.is_cuda and y.is_cuda



@needs_fashion
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (run by benchmarks/gpu_check.sh)")
def test_gpu_run_resumes_on_cpu_and_deterministic_gpu_runs_agree(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    train(tiny(a, device="cuda", max_steps=4))
    train(tiny(b, device="cuda", max_steps=4))
    assert_same(final_weights(a), final_weights(b))  # deterministic algorithms: two GPU runs agree bitwise
    result = train(tiny(a, device="cpu", resume=True))  # ...and the run finishes on the CPU
    assert result["step"] == 8 and json.loads((a / "config.json").read_text())["settings"]["device"] == "cpu"


@needs_fashion
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (run by benchmarks/gpu_check.sh)")
def test_gpu_compile_reports_compile_time(tmp_path):
    result = train(tiny(tmp_path / "c", device="cuda", compile=True, max_steps=3, amp=True))
    assert result["compile_time_s"] > 0
