"""Start-up: ``mobilecnn --help`` / ``--version`` are answered without torch, from the same command table the
full parser reads."""

from __future__ import annotations

import subprocess
import sys

from mobilecnn.cli import build_parser, main
from mobilecnn.cli.commands import COMMANDS


def test_top_level_help_loads_no_torch():
    code = ("import sys; from mobilecnn.cli import main; c = main(['--help']); "
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', c)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().endswith("NO-TORCH 0") and "COMMAND" in done.stdout
    for name in COMMANDS:
        assert name in done.stdout


def test_the_quick_help_lists_exactly_the_full_parsers_commands(capsys):
    full = build_parser()
    sub = next(a for a in full._actions if a.dest == "command")
    assert list(sub.choices) == list(COMMANDS)
    assert main([]) == 2 and "required: COMMAND" in capsys.readouterr().err
    assert main(["--version"]) == 0


#: What a command pays for only when it uses it: torchvision loads torch._dynamo (1.5 s), matplotlib and adjustText
#: 0.6 s, the runtimes seconds more (benchmarks/results/startup.md).
HEAVY = ("torchvision", "torch._dynamo", "torch._inductor", "matplotlib", "adjustText", "scipy", "onnx",
         "onnxruntime", "openvino", "executorch", "ai_edge_litert", "h5py", "faster_coco_eval", "pycocotools")


def _loaded_after(code: str) -> list[str]:
    probe = f"import sys\n{code}\nprint([m for m in {HEAVY!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return eval(done.stdout.strip().splitlines()[-1])  # a list literal printed by the probe


def test_every_commands_parser_loads_no_heavy_module():
    assert _loaded_after("from mobilecnn.cli.app import build_parser; build_parser()") == []


def test_list_runs_without_heavy_modules_and_loads_only_its_own_command_group():
    code = ("from mobilecnn.cli import main; assert main(['list', 'mobilenet_v2_x1_0']) == 0\n"
            "assert 'mobilecnn.cli.deploy' not in sys.modules and 'mobilecnn.cli.training' not in sys.modules")
    assert _loaded_after(code) == []


def test_a_command_built_alone_still_lists_every_command(capsys):
    from mobilecnn.cli.app import build_parser as build

    parser = build("list")
    sub = next(a for a in parser._actions if a.dest == "command")
    assert list(sub.choices) == list(COMMANDS)
    assert main(["lst"]) == 2 and "invalid choice" in capsys.readouterr().err
