"""Benchmark harness: a tiny run writes JSON, Markdown and PNG with the torchvision reference rows."""

from __future__ import annotations

import json

import pytest
import torch

from mobilecnn.deploy.bench import (
    REFERENCE_BACKEND,
    REFERENCE_MODEL,
    BenchRow,
    BenchSpec,
    benchmark,
)
from mobilecnn.deploy.bench_report import write_bench_outputs
from mobilecnn.deploy.timing import machine_label, time_callable
from mobilecnn.device import available_cpus


@pytest.fixture(autouse=True)
def _one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def test_tiny_benchmark_writes_outputs(tmp_path):
    backends = ["eager"]
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401

        backends.append("onnxruntime")
    except ImportError:
        pass
    spec = BenchSpec(tuple(backends), (1,), (1,), 32, small_input=True, num_classes=10, in_chans=1, warmup=1,
                     repeats=3, min_time_s=0.0)
    rows = benchmark(["mobilenet_v1_x0_25"], spec, work_dir=tmp_path / "work")
    got = {(r.model, r.backend) for r in rows}
    for backend in backends:
        for model in ("mobilenet_v1_x0_25", REFERENCE_MODEL, "torchvision.shufflenet_v2_x1_0"):
            assert (model, backend) in got
    assert (REFERENCE_MODEL, REFERENCE_BACKEND) in got
    for r in rows:
        assert r.median_ms is not None and r.median_ms > 0, r.notes
        assert r.min_ms <= r.median_ms <= r.p90_ms
        assert r.runs >= 3 and r.threads == 1 and r.batch == 1 and r.resolution == 32
        assert r.macs > 0 and r.params > 0 and r.loadavg is not None
        assert r.ratio_to_reference is not None
        assert r.reference == r.model.startswith("torchvision.")
    refs = [r for r in rows if r.model == REFERENCE_MODEL and r.backend == REFERENCE_BACKEND]
    assert len(refs) == 2 and rows[0] is refs[0] and rows[-1] is refs[1]  # timed first and last
    assert min(r.ratio_to_reference for r in refs) == pytest.approx(1.0)
    ref = refs[0]
    ours = next(r for r in rows if r.model == "mobilenet_v1_x0_25" and r.backend == "eager")
    assert ours.macs != ref.macs and ours.params < ref.params  # 0.25x MobileNet V1 vs MobileNetV2 1.0

    rows[0].accuracy = 80.0  # an accuracy column adds the accuracy-vs-latency panel
    paths = write_bench_outputs(rows, tmp_path / "out")
    assert set(paths) == {"json", "md", "png"}
    data = json.loads(paths["json"].read_text())
    assert len(data["rows"]) == len(rows) and "torch" in data["meta"]
    md = paths["md"].read_text()
    assert "torchvision.mobilenet_v2 (ref)" in md and "eager_reference" in md and "accuracy" in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_benchmark_bad_options():
    with pytest.raises(ValueError, match="accepted: eager"):
        benchmark(["mobilenet_v1_x0_25"], BenchSpec(("tensorrt",), (1,), (1,), 32))
    with pytest.raises(ValueError, match="CPU"):
        benchmark(["mobilenet_v1_x0_25"], BenchSpec(("eager",), (available_cpus() + 1,), (1,), 32))
    with pytest.raises(ValueError, match="batch"):
        benchmark(["mobilenet_v1_x0_25"], BenchSpec(("eager",), (1,), (0,), 32))


def test_time_callable_counts():
    calls = []
    samples = time_callable(lambda: calls.append(1), warmup=2, repeats=5, min_time_s=0.0)
    assert len(samples) == 5 and len(calls) == 7


def test_failed_backend_is_a_row_not_an_exception(monkeypatch):
    import mobilecnn.deploy.bench as bench

    def broken(*args, **kwargs):
        raise RuntimeError("simulated compiler crash")

    monkeypatch.setattr(bench.torch, "compile", broken)
    rows = benchmark(["mobilenet_v1_x0_25"], BenchSpec(("compiled",), (1,), (1,), 32, small_input=True, num_classes=10,
                                                       in_chans=1, warmup=0, repeats=1, min_time_s=0.0,
                                                       references=False))
    assert len(rows) == 1 and isinstance(rows[0], BenchRow)
    assert rows[0].median_ms is None and "simulated compiler crash" in " ".join(rows[0].notes)


def test_machine_label_names_the_cpu_and_its_bf16(monkeypatch):
    import mobilecnn.deploy.timing as timing

    monkeypatch.setattr(timing, "cpu_flags", lambda: {"avx2", "avx512_bf16"})
    assert machine_label().endswith(" CPUs, avx512_bf16") and "unknown" not in machine_label()
    monkeypatch.setattr(timing, "cpu_flags", lambda: {"avx2"})
    assert machine_label().endswith("no bf16 instructions")
