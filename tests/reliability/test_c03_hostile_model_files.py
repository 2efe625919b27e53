"""Class 3: a crafted ExecuTorch file is a clear error, never a crash of the process."""

import os

import pytest

from mobilecnn.deploy.formats import load_runtime

pytest.importorskip("executorch")


def _crafted_pte(path, payload: bytes) -> None:
    size = 40 + len(payload)
    header = (b"\x1c\x00\x00\x00" + b"ET12" + b"eh00" + (32).to_bytes(4, "little") + size.to_bytes(8, "little")
              + (0).to_bytes(8, "little") + (0).to_bytes(8, "little"))
    path.write_bytes(header + payload)


@pytest.mark.parametrize("seed", [0, 1])
def test_random_bytes_behind_a_valid_header_raise(tmp_path, seed):
    path = tmp_path / "model.pte"
    _crafted_pte(path, os.urandom(4096) if seed else bytes(range(256)) * 16)
    with pytest.raises(ValueError, match="model.pte"):
        load_runtime(path)


def test_not_a_program_is_refused_before_loading(tmp_path):
    path = tmp_path / "model.pte"
    path.write_bytes(b"hello world, not a program at all")
    with pytest.raises(ValueError, match="not an ExecuTorch program"):
        load_runtime(path)
