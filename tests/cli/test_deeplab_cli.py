"""``mobilecnn profile`` and ``tables`` with the Mobile DeepLabv3 models beside MobileNetV2 Table 7."""

import json

from mobilecnn.cli import main


def test_profile_shows_the_table7_row(capsys):
    assert main(["profile", "deeplabv3_mobilenet_v2_x1_0", "--aspp"]) == 0  # 513 px by default for segmentation
    out = capsys.readouterr().out
    assert "deeplabv3_mobilenet_v2_x1_0 @ 513px" in out
    assert "MACs: 5363.51 M (dilated convs charged plain; TF space-to-batch: 5823.10 M)" in out
    assert ("MobileNetV2 Table 7 MNV2* OS16 ASPP: published 4.52 M params, 5.8 B MAdds (mIOU 75.70); counted "
            "4.524 M, 5.823 B the TF way, 5.364 B plain") in out
    assert "published 387 B MAdds" not in out  # the OS8 MF row is another configuration


def test_profile_json_space_to_batch(capsys):
    assert main(["profile", "deeplabv3_mobilenet_v1_x0_25", "--resolution", "129", "--output-stride", "8",
                 "--dilated", "space_to_batch", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["dilated"] == "space_to_batch" and data["macs"] == data["macs_space_to_batch"] > 0


def test_tables_show_table7(capsys):
    assert main(["tables"]) == 0
    out = capsys.readouterr().out
    assert "## MobileNetV2 Table 7: Mobile DeepLabv3" in out
    assert "| MNV2* | `deeplabv3_mobilenet_v2_x1_0` | 16 | yes |  | 75.70 | 4.524 | 4.52 | 5.364 | 5.823 | 5.8 |" in out
