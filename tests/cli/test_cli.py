import dataclasses
import json

import pytest

from mobilecnn.analysis import ProfileConfig, TablesConfig
from mobilecnn.cli import main
from mobilecnn.cli.app import build_parser
from mobilecnn.data.scenes import ScenesConfig
from mobilecnn.deploy.bench import BenchConfig
from mobilecnn.deploy.predict import PredictConfig
from mobilecnn.deploy.run_export import RunExportConfig
from mobilecnn.errors import UsageError
from mobilecnn.evaluate import EvalConfig, evaluate_run
from mobilecnn.models import ListConfig
from mobilecnn.reproduce import ReproduceConfig
from mobilecnn.train import TrainConfig
from mobilecnn.weights import ImportConfig


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
    for flag in ("--threads", "--seeds"):
        for value in ("0", "two"):
            assert main(["reproduce", "--quick", flag, value]) == 2  # argparse's one-line error, exit 2
            assert "expected a positive integer" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["eval", "RUN", "--batch-size", "0"],
    ["eval", "RUN", "--subset", "0"],
    ["profile", "mobilenet_v1_x0_25", "--resolution", "0"],
    ["profile", "mobilenet_v1_x0_25", "--in-chans", "0"],
    ["weights", "import", "w.pth", "--from", "timm", "--out", "w.safetensors", "--resolution", "0"],
])
def test_zero_counts_are_refused_in_one_line(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert f"argument {argv[-2]}: expected a positive integer, got '0'" in err[-1]
    assert not any(tmp_path.iterdir())  # refused before anything ran


def test_eval_refuses_a_zero_batch_in_the_library_too(tmp_path):
    with pytest.raises(UsageError, match="--batch-size 0 is not accepted: it must be a positive integer"):
        evaluate_run(tmp_path, batch_size=0)  # it used to evaluate with batches of 256


def _subparser(parser, path):
    for name in path:
        action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        parser = action.choices[name]
    return parser


@pytest.mark.parametrize("path,config", [
    (["train"], TrainConfig), (["eval"], EvalConfig), (["reproduce"], ReproduceConfig), (["profile"], ProfileConfig),
    (["list"], ListConfig), (["tables"], TablesConfig), (["weights", "import"], ImportConfig),
    (["export"], RunExportConfig), (["bench"], BenchConfig), (["predict"], PredictConfig),
    (["data", "scenes"], ScenesConfig),
])
def test_every_option_comes_from_the_commands_config(path, config):
    parser = _subparser(build_parser(), path)
    options = {a.dest for a in parser._actions if a.dest not in ("help", "json", "int8")}  # --int8: an alias
    fields = {f.name: f for f in dataclasses.fields(config) if "cli" in f.metadata}
    assert options == set(fields)
    for action in parser._actions:
        if action.dest in fields:
            f = fields[action.dest]
            default = None if f.default is dataclasses.MISSING else f.default
            assert action.default == default and action.help.startswith(f.metadata["cli"]["help"])
