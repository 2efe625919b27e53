"""Class 4: a failed export leaves the previous good export in place."""

import pytest

from mobilecnn.deploy.formats import load_runtime
from mobilecnn.deploy.run_export import export_run

pytest.importorskip("onnxruntime")


def test_unwritable_sidecar_keeps_the_previous_file(tmp_path, folder_run):
    out = tmp_path / "export" / "m.onnx"
    export_run(folder_run, "onnx", out)
    before = out.read_bytes()
    sidecar = out.parent / "m.onnx.mobilecnn.json"
    sidecar.unlink()
    sidecar.mkdir()
    (sidecar / "blocker").write_text("a directory where the sidecar goes")
    with pytest.raises(OSError):
        export_run(folder_run, "onnx", out)
    assert out.read_bytes() == before
    load_runtime(out)
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".export")]


def test_an_auto_search_that_keeps_nothing_leaves_the_last_good_table(tmp_path, folder_run, monkeypatch):
    import json

    from mobilecnn.deploy import auto

    out = tmp_path / "export" / "m_auto"
    first = export_run(folder_run, "auto", out, candidates=["onnx"], seconds=0.2, check_count=12,
                       calibration_count=32)
    assert first["kept"] and first["table_json"].endswith("m_auto.auto.json")
    good = (tmp_path / "export" / "m_auto.auto.json").read_text()

    def refuse_all(model, images, config, work, sidecar):
        return [{"candidate": "onnxruntime fp32", "format": "onnx", "runtime": "onnxruntime", "precision": "fp32",
                 "status": "refused", "why": "forced"}], {}

    monkeypatch.setattr(auto, "_export_all", refuse_all)
    second = export_run(folder_run, "auto", out, candidates=["onnx"], seconds=0.2, check_count=12,
                        calibration_count=32)
    assert second["kept"] is None and second["table_json"].endswith("m_auto.auto.refused.json")
    assert (tmp_path / "export" / "m_auto.auto.json").read_text() == good  # still describes the kept file
    assert json.loads(good)["kept"] == first["kept"] and load_runtime(first["kept"])
