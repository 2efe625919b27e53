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
