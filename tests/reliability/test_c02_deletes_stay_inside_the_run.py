"""Class 2: pruning and every other delete stay inside the run directory and never follow links."""

import torch
from torch import nn

from mobilecnn.runs.checkpoints import latest_checkpoint, save_training_checkpoint


def _save(run, step):
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    progress = {"epoch": 0, "step": step, "step_in_epoch": step}
    return save_training_checkpoint(run, model=model, optimizer=opt, progress=progress, keep=1)


def test_pruning_removes_a_linked_checkpoint_link_not_the_archive(tmp_path):
    archive = tmp_path / "archive" / "step-00000001"
    archive.mkdir(parents=True)
    for name in ("state.json", "model.safetensors", "notes.txt"):
        (archive / name).write_text("archived")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "step-00000001").symlink_to(archive, target_is_directory=True)
    _save(run, 5)
    _save(run, 9)
    assert sorted(p.name for p in archive.iterdir()) == ["model.safetensors", "notes.txt", "state.json"]
    assert all((archive / n).read_text() == "archived" for n in ("state.json", "model.safetensors", "notes.txt"))
    assert latest_checkpoint(run).name == "step-00000009"


def test_stale_temp_link_is_unlinked_not_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / ".step-00000003.tmp-999").symlink_to(outside, target_is_directory=True)
    _save(run, 4)
    assert (outside / "keep.txt").read_text() == "keep"
