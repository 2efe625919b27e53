"""Class 5: ``checkpoints/LATEST`` and linked checkpoints never lead outside their run."""

import shutil

from mobilecnn.runs.checkpoints import latest_checkpoint
from mobilecnn.runs.rundir import load_trained


def test_latest_pointing_into_another_run_is_ignored(tmp_path, folder_data, folder_run, train_run):
    other = train_run(folder_data, tmp_path / "other", model="shufflenet_v1_g3_x0_25")
    mine = tmp_path / "mine"
    shutil.copytree(folder_run, mine)
    own = latest_checkpoint(mine)
    foreign = latest_checkpoint(other)
    (mine / "checkpoints" / "LATEST").write_text(f"../../other/checkpoints/{foreign.name}\n")
    assert latest_checkpoint(mine) == own
    (mine / "checkpoints" / "step-99999999").symlink_to(foreign, target_is_directory=True)
    assert latest_checkpoint(mine) == own
    assert load_trained(mine).model_name == "mobilenet_v1_x0_25"
