"""Hardening: kill -9 during training, malicious checkpoints, fuzzed API/CLI input, full or read-only disks, two runs.

Fast by design (tiny models, 64-512 images, a handful of steps). The long version of the kill test is
``benchmarks/kill_stress.py`` (20+ trials); this file imports its functions.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import os
import pickle
import random
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch

from mobilecnn import create_model, list_models, profile
from mobilecnn.errors import CheckpointError
from mobilecnn.models.weights_file import load_weights
from mobilecnn.runs.checkpoints import latest_checkpoint
from mobilecnn.cli import main
from mobilecnn.evaluate import evaluate_run
from mobilecnn.runs.rundir import load_trained
from mobilecnn.data.images import Preprocessing
from mobilecnn.deploy.predict import Predictor, load_predictor, predict_files
from mobilecnn.errors import UnknownModelError
from mobilecnn.train import TrainConfig, train

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FASHION = Path(os.environ.get("MOBILECNN_DATA_DIR", "/usr/share/datasets/fashion-mnist"))
needs_fashion = pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").is_file(),
                                   reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
FUZZ = dict(deadline=None, derandomize=True, database=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                   HealthCheck.filter_too_much, HealthCheck.data_too_large])
FUZZED: Counter[str] = Counter()  # inputs tried per target, printed by the last test
RUN_ARGS = ["--model", "mobilenet_v1_x0_25", "--subset", "256", "--val-subset", "256", "--batch-size", "64",
            "--epochs", "1", "--threads", "1", "--seed", "0", "--ema", "0.9"]


def _load_stress():
    spec = importlib.util.spec_from_file_location("kill_stress", ROOT / "benchmarks" / "kill_stress.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


stress = _load_stress()


class Hang(BaseException):
    """Raised into a CLI call that ran past its time limit (a BaseException: the CLI must not swallow it)."""


def cli(capsys, *args: str, limit: float = 120.0) -> tuple[int, str, str]:
    """Run the CLI in-process; (exit code, stdout, stderr). An uncaught exception or a hang fails the calling test."""
    import signal

    def alarm(signum, frame):
        raise Hang(f"mobilecnn {' '.join(map(str, args))} still running after {limit:g} s")

    capsys.readouterr()
    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse
        code = exc.code
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_clean_error(code: int, err: str, allowed: tuple[int, ...] = (2,)) -> None:
    """A refused command: the allowed exit code and an ``error:`` line, never a traceback."""
    assert code in allowed, (code, err[-2000:])
    assert "error:" in err and "Traceback" not in err, err[-2000:]


@contextlib.contextmanager
def keep_threads() -> Iterator[None]:
    """``train`` sets the process-wide thread count; give the rest of the suite its own back."""
    n = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread: tiny batch-1 forwards gain nothing from two, and lose a lot on a busy machine."""
    with keep_threads():
        torch.set_num_threads(1)
        yield


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny trained run with EMA (so model, state and ema weight files all exist)."""
    if not (FASHION / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST not installed")
    out = tmp_path_factory.mktemp("hardening") / "run"
    with keep_threads():
        train(TrainConfig(model="mobilenet_v1_x0_25", out=str(out), subset=256, val_subset=256, batch_size=64,
                          epochs=1, threads=1, seed=0, ema=0.9))
    return out


# ------------------------------------------------------------------------------------------ kill -9


@needs_fashion
def test_kill_9_at_random_moments_then_resume_matches_uninterrupted(tmp_path, capsys):
    """3 trials of benchmarks/kill_stress.py: inside a checkpoint write, mid-training (+ resume killed too), random."""
    cfg = {"subset": 256, "val_subset": 128}  # 8 steps, a checkpoint every 2
    with keep_threads():
        t0 = time.perf_counter()
        train(stress.train_config(tmp_path / "reference", cfg))
        wall = time.perf_counter() - t0  # ~ a subprocess's run less its start-up: "random" kills land inside the run
    reference = stress.final_weights(tmp_path / "reference")

    def resume_in_process(run: Path, cfg: dict, log: Path) -> tuple[int, str]:
        args = stress.train_command(run, cfg, resume=(run / "config.json").is_file())[3:]
        with keep_threads():
            code, _, err = cli(capsys, *args)
        return code, err

    rng = random.Random(1234)
    results = []
    for attempt in range(3):  # the poll may see a write only after it finished: retry until one is hit
        r = stress.run_trial(attempt, rng, tmp_path, reference, wall, cfg, mode="checkpoint", kill_resume=False,
                             resume=resume_in_process)
        results.append(r)
        if r["kills"][0]["in_checkpoint_write"]:
            break
    assert any(k["in_checkpoint_write"] for r in results for k in r["kills"]), results
    results.append(stress.run_trial(10, rng, tmp_path, reference, wall, cfg, mode="training", kill_resume=True,
                                    resume=resume_in_process))
    for attempt in range(11, 14):  # a random delay may fall after the end of the run: retry until it kills
        r = stress.run_trial(attempt, rng, tmp_path, reference, wall, cfg, mode="random", kill_resume=False,
                             resume=resume_in_process)
        results.append(r)
        if r["kills"][0]["killed"]:
            break
    for r in results:
        assert r["survived"], (r["failures"], r)
        assert not r["mismatch"]
    kills = [k for r in results for k in r["kills"] if k["killed"]]
    assert len(kills) >= 3, results
    FUZZED["kill -9 faults injected"] += len(kills)
    FUZZED["kill -9 faults survived"] += sum(len([k for k in r["kills"] if k["killed"]]) for r in results if r["survived"])


# ------------------------------------------------------------------------------------------ malicious files


class _Payload:
    """Unpickling this runs ``touch MARKER``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_files(d: Path, marker: Path) -> dict[str, Path]:
    d.mkdir(parents=True, exist_ok=True)
    payload = {"weight": _Payload(marker)}
    files = {
        "zip.pt": d / "evil.pt",
        "legacy.pth": d / "evil.pth",
        "p2.safetensors": d / "evil.safetensors",
        "p0.safetensors": d / "evil_p0.safetensors",
    }
    torch.save(payload, files["zip.pt"])
    torch.save(payload, files["legacy.pth"], _use_new_zipfile_serialization=False)
    files["p2.safetensors"].write_bytes(pickle.dumps(payload, protocol=2))
    files["p0.safetensors"].write_bytes(pickle.dumps(payload, protocol=0))  # no \x80 header
    return files


def test_the_payload_really_runs_when_unpickled(tmp_path):
    """Control: the marker appears when the file is unpickled the unsafe way, so its absence below means something."""
    marker = tmp_path / "control"
    path = _evil_files(tmp_path / "f", marker)["p2.safetensors"]
    pickle.loads(path.read_bytes())
    assert marker.exists()


@needs_fashion
def test_malicious_weight_files_are_refused_everywhere(tmp_path, capsys):
    marker = tmp_path / "pwned"
    files = _evil_files(tmp_path / "evil", marker)
    for kind, path in files.items():
        with pytest.raises(CheckpointError, match=re.escape(str(path))):
            load_weights(path)
        with pytest.raises(CheckpointError):
            load_trained(path)
        with pytest.raises(CheckpointError):
            evaluate_run(path)
        with pytest.raises((CheckpointError, ValueError)):
            load_predictor(path)
        img = tmp_path / "x.png"
        from PIL import Image

        Image.new("L", (28, 28), 128).save(img)
        for args in (["predict", img, "--model", path], ["eval", path], ["export", path, "--format", "onnx"],
                     ["bench", path, "--backend", "eager", "--repeats", "1", "--out", tmp_path / "bench"]):
            code, _, err = cli(capsys, *args)
            assert_clean_error(code, err)
            FUZZED["malicious file x entry point"] += 1
        assert not marker.exists(), kind
    # an exported-looking .pt with a sidecar reaches the TorchScript runtime: it must refuse a pickle, not run it
    for kind in ("zip.pt", "legacy.pth"):
        pt = tmp_path / f"with_sidecar_{kind}.pt"
        shutil.copy(files[kind], pt)
        Path(str(pt) + ".mobilecnn.json").write_text(json.dumps({"model": "x", "data": {"in_chans": 1, "resolution": 28}}))
        with pytest.raises(ValueError, match="could not load"):
            load_predictor(pt)
        code, _, err = cli(capsys, "predict", img, "--model", pt)
        assert_clean_error(code, err)
    assert not marker.exists()


@needs_fashion
@pytest.mark.parametrize("member", ["model.safetensors", "state.safetensors", "ema.safetensors"])
def test_malicious_file_inside_a_checkpoint_is_refused(run_dir, tmp_path, capsys, member):
    marker = tmp_path / "pwned"
    evil = _evil_files(tmp_path / "evil", marker)
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    ckpt = latest_checkpoint(run)
    for kind in ("zip.pt", "p0.safetensors"):
        shutil.copy(evil[kind], ckpt / member)
        if member != "state.safetensors":  # inference reads model/ema weights only
            with pytest.raises(CheckpointError, match=member):
                load_trained(run, prefer_ema=member == "ema.safetensors")
            commands = [["eval", run, "--no-ema"]] if member == "model.safetensors" else \
                [["eval", run], ["export", run, "--format", "onnx"], ["predict", run, "--model", run],  # EMA preferred
                 ["bench", run, "--backend", "eager", "--repeats", "1", "--out", tmp_path / "bench"]]
            for args in commands:
                code, _, err = cli(capsys, *args)
                assert_clean_error(code, err)
                assert member in err
        # --resume reads all three
        with keep_threads():
            code, _, err = cli(capsys, "train", "--out", run, *RUN_ARGS, "--resume")
        assert_clean_error(code, err)
        assert member in err, err
        FUZZED["malicious file x entry point"] += 3
    assert not marker.exists()


def test_no_unsafe_deserialisation_in_the_source():
    """Every torch.load / pickle load / jit.load in the package is a safe one."""
    src = ROOT / "src" / "mobilecnn"
    uses = []
    for py in sorted(src.rglob("*.py")):
        for no, line in enumerate(py.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if re.search(r"torch\.load\(|pickle\.loads?\(|\.Unpickler\b|jit\.load\(|allow_pickle\s*=\s*True|"
                         r"weights_only\s*=\s*False|dill|joblib\.load|np\.load\(", code):
                uses.append((py.relative_to(src).as_posix(), no, code.strip()))
    for path, no, code in uses:
        if "torch.load(" in code:
            assert "weights_only=True" in code, (path, no, code)
        elif "Unpickler" in code:
            assert path == "data/cifar.py" and "_NumpyOnlyUnpickler" in code, (path, no, code)
        elif "jit.load(" in code:
            assert path == "deploy/runtimes.py", (path, no, code)  # exported .pt files only; see the predict test above
        else:
            pytest.fail(f"unsafe deserialisation at {path}:{no}: {code}")
    assert any("jit.load(" in c for _, _, c in uses)  # the scan does see the one we know of


def test_cifar_reader_refuses_a_malicious_pickle(tmp_path):
    from mobilecnn.data.cifar import DataError, _safe_unpickle

    marker = tmp_path / "pwned"
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": _Payload(marker)}, protocol=2))
    with pytest.raises(DataError, match="refusing"):
        _safe_unpickle(path)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------ fuzzing: API

_WORDS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=12)
_VALUES = st.one_of(
    st.integers(-5, 300), st.sampled_from([0, -1, 10**6, 10**9, 2**63, -2**31]),
    st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(), st.text(max_size=8),
)


@given(name=st.one_of(st.sampled_from(list_models()), _WORDS, st.sampled_from(["", "MOBILENET_V2_X1_0", "*"])),
       kwargs=st.dictionaries(st.one_of(st.sampled_from(["num_classes", "in_chans", "small_input", "dropout", "shuffle",
                                                         "_a", "_g", "_s", "alpha", "groups"]), _WORDS),
                              _VALUES, max_size=3))
@example(name="mobilenet_v2_x0_35", kwargs={"dropout": "x"})
@example(name="mobilenet_v1_x0_25", kwargs={"dropout": None})
@example(name="mobilenet_v2_x0_35", kwargs={"num_classes": 10**9})
@example(name="mobilenet_v1_x0_25", kwargs={"in_chans": 10**6})
@example(name="mobilenet_v1_x0_25", kwargs={"_a": 1000.0})
@example(name="shufflenet_v1_g1_x0_25", kwargs={"_g": 0})
@settings(max_examples=60, **FUZZ)
def test_fuzz_create_model(name, kwargs):
    FUZZED["create_model"] += 1
    try:
        model = create_model(name, **kwargs)
    except (ValueError, TypeError, UnknownModelError) as exc:  # UnknownModelError is a ValueError
        msg = str(exc)
        assert msg and "\n" not in msg.strip()
        named = [k for k in kwargs if k in msg] + ([name] if repr(name) in msg or name in msg else [])
        assert named, f"{type(exc).__name__}: {msg!r} names none of {name!r}, {sorted(kwargs)}"
        return
    side = model.min_input_size
    with torch.no_grad():
        out = model.eval()(torch.randn(1, model.in_chans, side, side))
    if out.dim() == 3:  # a detector: box offsets and class logits of every anchor
        assert out.shape == (1, model.num_anchors(side, side), 4 + model.num_classes)
    else:
        per_pixel = out.dim() == 4  # a segmentation model: logits at the input size
        assert out.shape == ((1, model.num_classes, side, side) if per_pixel else (1, model.num_classes))
    assert torch.isfinite(out).all()


@given(name=st.sampled_from(["mobilenet_v1_x0_25", "shufflenet_v1_g3_x0_25", "mobilenet_v2_x0_35", "shufflenet_v1_g8_x0_25"]),
       resolution=st.one_of(st.integers(1, 300), st.integers(-10**6, 0), st.sampled_from([10**5, 10**9, 2**70]),
                            st.floats(allow_nan=True), st.booleans(), st.none(), st.text(max_size=4)),
       small_input=st.booleans())
@example(name="mobilenet_v1_x0_25", resolution=10**5, small_input=False)
@example(name="mobilenet_v1_x0_25", resolution=10**9, small_input=True)
@example(name="mobilenet_v1_x0_25", resolution=2**70, small_input=False)
@example(name="mobilenet_v2_x0_35", resolution=0, small_input=False)
@example(name="shufflenet_v1_g3_x0_25", resolution=300, small_input=True)
@settings(max_examples=30, **FUZZ)
def test_fuzz_profile(name, resolution, small_input):
    FUZZED["profile"] += 1
    try:
        p = profile(name, resolution=resolution, small_input=small_input)
    except (ValueError, TypeError) as exc:
        assert "resolution" in str(exc) or "input" in str(exc), str(exc)
        return
    assert p.resolution == resolution and 0 < p.params_without_bn < p.params
    assert p.macs > 0 and p.peak_activation_bytes >= 4 * p.in_chans * resolution**2 and p.layers


@pytest.mark.parametrize("resolution", ["0", "-5", "100000", "99999999999999999999", "7"])
def test_profile_cli_bad_resolution_is_a_clean_error(capsys, resolution):
    code, _, err = cli(capsys, "profile", "mobilenet_v1_x0_25", "--resolution", resolution)
    assert_clean_error(code, err)
    assert "resolution" in err or "too small" in err


# ------------------------------------------------------------------------------------------ fuzzing: predict

_MAGIC = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"RIFF\x00\x00\x00\x00WEBPVP8 ",
          b"II*\x00", b"MM\x00*", b"P6\n", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 9 9\n", b"\x00\x00\x01\x00",
          b"8BPS"]


def _png_header(width: int, height: int, mode_byte: int = 2) -> bytes:
    """A PNG claiming ``width`` x ``height`` with almost no pixel data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, mode_byte, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def photo_bytes() -> dict[str, bytes]:
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    out = {}
    for name, arr in (("astronaut", skimage_data.astronaut()), ("coffee", skimage_data.coffee())):
        img = Image.fromarray(arr).resize((160, 120))
        for fmt in ("PNG", "JPEG"):
            buf = io.BytesIO()
            img.save(buf, fmt)
            out[f"{name}.{fmt.lower()}"] = buf.getvalue()
    return out


@pytest.fixture(scope="module")
def predictors(run_dir) -> list[Predictor]:
    """The run's (1 channel, 32 px, squash) and a 3-channel center-crop stand-in."""
    rgb = Predictor(logits=lambda x: np.stack([x.mean((1, 2, 3)), -x.mean((1, 2, 3)), x.std((1, 2, 3))], 1),
                    class_names=["a", "b", "c"], source="stand-in",
                    preprocessing=Preprocessing(48, 3, (0.5,) * 3, (0.25,) * 3, resize="center_crop"))
    return [load_predictor(run_dir), rgb]


def _check_prediction(results, paths, good: bool | None) -> None:
    assert len(results) == len(paths)
    for r, p in zip(results, paths):
        if r.error:
            assert str(p) in r.error and not r.top, r
            assert good is not True, r.error
        else:
            assert r.top and all(0 <= prob <= 1 for _, prob in r.top), r
            assert good is not False, f"{p} was classified"


@given(data=st.binary(max_size=600), magic=st.sampled_from(_MAGIC),
       suffix=st.sampled_from([".png", ".jpg", ".gif", ".bmp", ".webp", ".tiff", ".txt", ""]), which=st.integers(0, 1))
@settings(max_examples=150, **FUZZ)
def test_fuzz_predict_random_bytes(predictors, tmp_path, data, magic, suffix, which):
    FUZZED["predict: random bytes"] += 1
    path = tmp_path / f"random{suffix}"
    path.write_bytes(magic + data)
    t0 = time.perf_counter()
    results = predict_files([path], predictors[which], topk=2)
    assert time.perf_counter() - t0 < 10
    _check_prediction(results, [path], None)


@given(name=st.sampled_from(["astronaut.png", "astronaut.jpeg", "coffee.png", "coffee.jpeg"]),
       cut=st.floats(0.0, 0.97), which=st.integers(0, 1))
@settings(max_examples=60, **FUZZ)
def test_fuzz_predict_truncated_photos(predictors, photo_bytes, tmp_path, name, cut, which):
    FUZZED["predict: truncated photos"] += 1
    data = photo_bytes[name]
    path = tmp_path / f"cut_{name}"
    path.write_bytes(data[: int(len(data) * cut)])
    _check_prediction(predict_files([path], predictors[which]), [path], False)


@given(width=st.integers(1, 100_000), height=st.integers(1, 100_000), mode_byte=st.sampled_from([0, 2, 4, 6]),
       which=st.integers(0, 1))
@settings(max_examples=60, **FUZZ)
def test_fuzz_predict_huge_dimension_headers(predictors, tmp_path, width, height, mode_byte, which):
    FUZZED["predict: huge headers"] += 1
    path = tmp_path / "huge.png"
    path.write_bytes(_png_header(width, height, mode_byte))
    t0 = time.perf_counter()
    results = predict_files([path], predictors[which])
    assert time.perf_counter() - t0 < 10, (width, height)
    from PIL import Image

    # beyond twice PIL's pixel limit: a decompression bomb, refused before any pixel is decoded
    _check_prediction(results, [path], False if width * height > 2 * Image.MAX_IMAGE_PIXELS else None)


def test_predict_claimed_100000_square_png_errors_fast(predictors, tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header(100_000, 100_000))
    t0 = time.perf_counter()
    (r,) = predict_files([path], predictors[1])
    assert time.perf_counter() - t0 < 5 and r.error and "bomb.png" in r.error


def test_predict_never_hands_postscript_to_ghostscript(predictors, tmp_path, monkeypatch):
    """PIL's EPS plugin runs Ghostscript on the file: predict opens raster formats only."""
    from PIL import EpsImagePlugin

    calls = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(EpsImagePlugin, "has_ghostscript", lambda: True)
    path = tmp_path / "photo.jpg"
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\nshowpage\n")
    (r,) = predict_files([path], predictors[0])
    assert r.error and "photo.jpg" in r.error and "not a readable image" in r.error and not calls


_MODES = {"1": ".png", "L": ".png", "LA": ".png", "P": ".png", "RGB": ".jpg", "RGBA": ".png", "CMYK": ".jpg",
          "I;16": ".png", "I": ".tiff", "F": ".tiff", "PA": ".png"}


@given(mode=st.sampled_from(sorted(_MODES)), width=st.integers(1, 120), height=st.integers(1, 120),
       fmt=st.sampled_from(["native", ".tiff", ".png", ".webp", ".gif", ".bmp"]), which=st.integers(0, 1))
@settings(max_examples=120, **FUZZ)
def test_fuzz_predict_odd_modes(predictors, photo_bytes, tmp_path, mode, width, height, fmt, which):
    from PIL import Image

    FUZZED["predict: odd modes"] += 1
    base = Image.open(io.BytesIO(photo_bytes["coffee.png"])).convert("RGB").resize((width, height))
    if mode in ("I", "F", "I;16"):
        arr = np.asarray(base.convert("L"), dtype=np.float64)
        scale = {"I": 2**20, "F": 1 / 255, "I;16": 257}[mode]
        img = Image.fromarray((arr * scale).astype({"I": np.int32, "F": np.float32, "I;16": np.uint16}[mode]))
        assert img.mode == mode
    else:
        img = base.convert(mode)
    suffix = _MODES[mode] if fmt == "native" else fmt
    path = tmp_path / f"img_{mode.replace(';', '_')}{suffix}"
    try:
        img.save(path)
    except (OSError, ValueError, KeyError):
        return  # PIL cannot write this mode in this format: nothing to read back
    FUZZED["predict: odd modes (written)"] += 1
    results = predict_files([path], predictors[which], topk=3)
    _check_prediction(results, [path], True)


# ------------------------------------------------------------------------------------------ fuzzing: CLI


_SUFFIX = {"onnx": ".onnx", "torchscript": ".pt", "openvino": ".xml", "executorch": ".pte"}


@needs_fashion
@given(fmt=st.sampled_from(["onnx", "onnx", "torchscript", "torchscript", "openvino", "executorch", "tflite"]),
       int8=st.booleans(),
       max_drop=st.one_of(st.none(), st.sampled_from([-1.0, 0.0, 100.0, math.nan, math.inf]), st.floats(-5, 5)),
       suffix=st.sampled_from(["match", "match", "match", ".onnx", ".pt", ".ts", ".xml", ".pte", ".bin", "", ".ONNX",
                               ".safetensors"]),
       calibration=st.sampled_from([None, None, 16, 32, 0, -3, 10**8]), threads=st.sampled_from([None, None, 1, 0, 10**6]),
       extra=st.sampled_from([[], [], ["--json"], ["--calibration-data", "cifar10"], ["--out"]]))
@example(fmt="onnx", int8=True, max_drop=None, suffix="match", calibration=10**8, threads=None, extra=[])  # was an OOM
@example(fmt="onnx", int8=True, max_drop=None, suffix="match", calibration=-3, threads=None, extra=[])
@example(fmt="torchscript", int8=False, max_drop=None, suffix="match", calibration=None, threads=None, extra=[])
@example(fmt="openvino", int8=False, max_drop=None, suffix="match", calibration=None, threads=None, extra=[])
@example(fmt="onnx", int8=True, max_drop=100.0, suffix="match", calibration=32, threads=1, extra=["--json"])
@settings(max_examples=25, **FUZZ)
def test_fuzz_export_cli(run_dir, tmp_path, capsys, fmt, int8, max_drop, suffix, calibration, threads, extra):
    FUZZED["export CLI"] += 1
    if int8 and fmt == "executorch" and suffix == "match":  # the slowest export (~10 s): keep the file fast
        fmt = "onnx"
    out = tmp_path / f"m{FUZZED['export CLI']}" / ("model" + (_SUFFIX.get(fmt, ".onnx") if suffix == "match" else suffix))
    args = ["export", run_dir, "--format", fmt, "--out", out, *extra]
    args += ["--int8"] if int8 else []
    args += [] if max_drop is None else ["--max-drop", repr(max_drop)]
    args += ["--calibration-count", str(calibration if calibration is not None else 32)]
    args += [] if threads is None else ["--threads", str(threads)]
    t0 = time.perf_counter()
    code, stdout, err = cli(capsys, *args)
    FUZZED[f"export CLI (exit {code})"] += 1
    if os.environ.get("HARDENING_DEBUG"):
        sys.__stderr__.write(f"\n{time.perf_counter() - t0:.1f}s exit {code}: {' '.join(map(str, args[3:]))} "
                             f"{err.strip()[-150:]}\n")
    if code == 0:
        assert "Traceback" not in err
        assert out.is_file() and Path(str(out) + ".mobilecnn.json").is_file()
    else:
        assert_clean_error(code, err)
        assert not out.exists(), "a refused export left its file"


@needs_fashion
def test_export_without_the_backend_installed_is_a_clean_error(run_dir, tmp_path, capsys, monkeypatch):
    import mobilecnn.deploy.writers as writers_module
    from mobilecnn.errors import MissingBackendError

    def missing(module: str, purpose: str):
        raise MissingBackendError(f"{purpose} needs the Python package {module!r}; pip install 'mobilecnn[deploy]'")

    monkeypatch.setattr(writers_module, "require_backend", missing)
    code, _, err = cli(capsys, "export", run_dir, "--format", "onnx", "--out", tmp_path / "m.onnx")
    assert_clean_error(code, err)
    assert "pip install" in err and not (tmp_path / "m.onnx").exists()


_TRAIN_OPTIONS = {  # about two valid values for each invalid one, so that most runs get as far as training
    "--batch-size": st.sampled_from([0, -1, 65, 2**63, 1, 2, 8, 16, 32, 33, 64]),
    "--epochs": st.sampled_from([0.0, -1.0, math.inf, math.nan, 1e-9, 0.5, 1.0, 3.0, 1e9]),
    "--lr": st.sampled_from([0.0, -0.1, math.inf, math.nan, 1e-6, 0.01, 0.1, 1.0, 1e12]),
    "--weight-decay": st.sampled_from([-1.0, math.inf, math.nan, 0.0, 1e-4, 0.1, 1e6]),
    "--schedule": st.sampled_from(["step", "", "linear", "cosine", "onecycle", "exponential", "constant"]),
    "--recipe": st.sampled_from(["imagenet", "", "fast", "shufflenet", "mobilenetv2", "fast"]),
    "--warmup": st.sampled_from([-1.0, math.inf, math.nan, 0.0, 0.5, 2.0, 1e9]),
    "--label-smoothing": st.sampled_from([-0.1, 1.0, 5.0, math.nan, 0.0, 0.1, 0.5, 0.999]),
    "--ema": st.sampled_from([-0.5, 1.0, 2.0, math.nan, 0.0, 0.5, 0.9, 0.9999]),
    "--crop-padding": st.sampled_from([-5, 257, 10**9, 0, 1, 4, 31, 32, 256]),
    "--checkpoint-every": st.sampled_from([-1, 0, 1, 2, 10**9]),
    "--resolution": st.sampled_from([0, -3, 10**6, 28, 32]),
    "--seed": st.sampled_from([2**64, 2**70, -2**64, -1, 0, 7, 2**63]),
    "--val-subset": st.sampled_from([0, -1, 1, 64, 10**9]),
    "--max-steps": st.sampled_from([0, -2, 1, 2, 3]),
    "--subset": st.sampled_from([0, -1, 1, 33, 64, 10**9]),
}


@needs_fashion
@given(model=st.sampled_from(["mobilenet_v1_x0_25", "shufflenet_v1_g3_x0_25", "mobilenet_v2_x0_35", "mobilenet_v9"]),
       options=st.dictionaries(st.sampled_from(sorted(_TRAIN_OPTIONS)), st.none(), max_size=4).flatmap(
           lambda keys: st.fixed_dictionaries({k: _TRAIN_OPTIONS[k] for k in keys})),
       flags=st.lists(st.sampled_from(["--amp", "--no-channels-last", "--small-input", "--no-small-input", "--resume"]),
                      max_size=2, unique=True))
@example(model="mobilenet_v1_x0_25", options={"--epochs": math.inf}, flags=[])
@example(model="mobilenet_v1_x0_25", options={"--crop-padding": 10**9}, flags=[])
@example(model="mobilenet_v1_x0_25", options={"--seed": 2**64}, flags=[])
@example(model="mobilenet_v1_x0_25", options={"--max-steps": 0, "--epochs": 1e9}, flags=[])
@example(model="mobilenet_v1_x0_25", options={"--lr": 1e12}, flags=[])
@settings(max_examples=50, **FUZZ)
def test_fuzz_train_cli(tmp_path, capsys, model, options, flags):
    FUZZED["train CLI"] += 1
    out = tmp_path / f"r{FUZZED['train CLI']}"
    args = {"--subset": "64", "--val-subset": "64", "--max-steps": "2", "--batch-size": "32", "--epochs": "1"}
    args.update({k: repr(v) if isinstance(v, float) else str(v) for k, v in options.items()})
    argv = ["train", "--model", model, "--out", out, "--threads", "1"] + [x for kv in args.items() for x in kv] + flags
    with keep_threads():
        code, _, err = cli(capsys, *argv, limit=60)
    FUZZED[f"train CLI (exit {code})"] += 1
    if code == 0:
        assert latest_checkpoint(out) is not None and "Traceback" not in err
    else:
        assert_clean_error(code, err, allowed=(2, 3))
        lines = [line for line in err.splitlines() if "error:" in line]
        assert len(lines) == 1, err


# ------------------------------------------------------------------------------------------ full / read-only disk


@contextlib.contextmanager
def tmpfs(path: Path, size: str, read_only: bool = False) -> Iterator[Path]:
    """A small tmpfs at ``path`` (root only); the test is skipped where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if read_only else "")
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no mount command")
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}): needs root in a machine that allows it")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _no_incomplete_files(root: Path) -> None:
    """No temporary leftovers, and every weight file or LATEST pointer present is complete."""
    from safetensors.torch import load_file

    for p in root.rglob("*"):
        assert not re.search(r"\.tmp(-\d+)?$|\.export$", p.name), f"leftover {p}"
        if p.suffix == ".safetensors":
            load_file(str(p))
        if p.name == "LATEST":
            assert (p.parent / p.read_text().strip() / "state.json").is_file()


@needs_fashion
def test_train_into_read_only_directory(tmp_path, capsys):
    with tmpfs(tmp_path / "ro", "64k", read_only=True) as ro:
        with keep_threads():
            code, _, err = cli(capsys, "train", "--out", ro / "run", *RUN_ARGS, "--max-steps", "2")
        assert_clean_error(code, err, allowed=(1, 2))
        assert "Read-only file system" in err and str(ro / "run") in err
        assert not any(ro.iterdir())


@needs_fashion
def test_train_disk_full_during_checkpoints(tmp_path, capsys):
    """A disk with room for one checkpoint: the second write fails cleanly, the first stays the latest and loads."""
    with tmpfs(tmp_path / "full", "2300k") as full:
        run = full / "run"
        args = ["train", "--out", run, *RUN_ARGS[:-2], "--checkpoint-every", "2", "--no-channels-last"]
        with keep_threads():
            code, _, err = cli(capsys, *args)
        assert_clean_error(code, err, allowed=(1,))
        assert "No space left" in err and str(run) in err, err
        _no_incomplete_files(full)
        ckpt = latest_checkpoint(run)
        assert ckpt is not None and ckpt.name == "step-00000002"
        assert load_trained(run).model is not None
        # with room again, --resume finishes the run
        subprocess.run(["mount", "-o", "remount,size=64m", str(full)], check=True)
        with keep_threads():
            code, _, err = cli(capsys, *args, "--resume")
        assert code == 0, err
        assert latest_checkpoint(run).name == "step-00000004"
        _no_incomplete_files(full)
    with tmpfs(tmp_path / "tiny", "128k") as tiny:  # not even the first checkpoint fits
        with keep_threads():
            code, _, err = cli(capsys, *args[:2], tiny / "run", *args[3:])
        assert_clean_error(code, err, allowed=(1,))
        assert "No space left" in err
        _no_incomplete_files(tiny)
        assert latest_checkpoint(tiny / "run") is None


@needs_fashion
def test_export_into_read_only_or_full_disk(run_dir, tmp_path, capsys):
    with tmpfs(tmp_path / "ro", "64k", read_only=True) as ro:
        code, _, err = cli(capsys, "export", run_dir, "--format", "onnx", "--out", ro / "m.onnx")
        assert_clean_error(code, err, allowed=(1, 2))
        assert "Read-only file system" in err and not any(ro.iterdir())
    for fmt, suffix in (("onnx", ".onnx"), ("torchscript", ".pt")):
        with tmpfs(tmp_path / f"full_{fmt}", "192k") as full:
            code, _, err = cli(capsys, "export", run_dir, "--format", fmt, "--out", full / f"m{suffix}")
            assert_clean_error(code, err, allowed=(1,))
            assert "No space left" in err and f"m{suffix}" in err
            assert not any(full.iterdir()), list(full.iterdir())
    # room for the model file but not for its sidecar: the file must go too
    code, _, err = cli(capsys, "export", run_dir, "--format", "torchscript", "--out", tmp_path / "probe" / "m.pt")
    assert code == 0, err
    size = (tmp_path / "probe" / "m.pt").stat().st_size
    with tmpfs(tmp_path / "exact", str(-(-size // 4096) * 4096)) as exact:
        code, _, err = cli(capsys, "export", run_dir, "--format", "torchscript", "--out", exact / "m.pt")
        assert_clean_error(code, err, allowed=(1,))
        assert "No space left" in err and not any(exact.iterdir()), list(exact.iterdir())


# ------------------------------------------------------------------------------------------ two runs, one directory


@needs_fashion
def test_second_run_on_the_same_directory_is_refused(tmp_path, capsys):
    out = tmp_path / "shared"
    first = subprocess.Popen(stress.train_command(out, {"subset": 512, "epochs": 2}), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / "config.json").is_file() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, "the first run ended before the second could start"
        for args in (stress.train_command(out, {"subset": 512, "epochs": 2})[3:],  # the same run
                     ["train", "--model", "shufflenet_v1_g3_x0_25", "--out", out, "--subset", "64"],  # another
                     stress.train_command(out, {"subset": 512, "epochs": 2}, resume=True)[3:]):
            with keep_threads():
                code, _, err = cli(capsys, *args)
            assert_clean_error(code, err)
            assert "in use by another mobilecnn train" in err
        _, first_err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, first_err[-2000:]
    assert load_trained(out).model is not None
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [8, 16]


def test_zz_report_fuzz_counts(capsys):
    """Prints how many inputs each target received (run with -s to see it)."""
    with capsys.disabled():
        print("\nhardening inputs:", json.dumps(dict(sorted(FUZZED.items()))))
