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
