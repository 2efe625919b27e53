import json

from mobilecnn.cli import main


def test_list(capsys):
    assert main(["list", "mobilenet_v1*"]) == 0
    assert capsys.readouterr().out.split() == ["mobilenet_v1_x0_25", "mobilenet_v1_x0_5", "mobilenet_v1_x0_75",
                                               "mobilenet_v1_x1_0"]
    assert main(["list", "nope*"]) == 2
    assert "no model matches" in capsys.readouterr().err


def test_profile_json(capsys):
    assert main(["profile", "shufflenet_v1_g3_x0_5", "--small-input", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"model", "resolution", "macs", "params", "params_without_bn", "peak_activation_bytes", "layers"} <= set(data)
    assert data["resolution"] == 32 and data["model"] == "shufflenet_v1_g3_x0_5"


def test_profile_text_and_errors(capsys):
    assert main(["profile", "mobilenet_v1_x0_25", "--resolution", "128"]) == 0
    out = capsys.readouterr().out
    assert "MACs:" in out and "peak activation memory" in out and "features.1.depthwise.conv" in out
    assert main(["profile", "mobilenet_v1_x0_2"]) == 2
    assert "closest: mobilenet_v1_x0_25" in capsys.readouterr().err
    assert main(["profile", "mobilenet_v1_x0_25", "--resolution", "8"]) == 2
    assert "too small" in capsys.readouterr().err


def test_tables_to_file(tmp_path, capsys):
    out = tmp_path / "tables.md"
    assert main(["tables", "--out", str(out)]) == 0
    assert "ShuffleNet Table 1" in out.read_text()


def test_reproduce_rejects_bad_counts(capsys):
    import pytest

    for flag in ("--threads", "--seeds"):
        for value in ("0", "two"):
            assert main(["reproduce", "--quick", flag, value]) == 2  # argparse's one-line error, exit 2
            assert "expected a positive integer" in capsys.readouterr().err
