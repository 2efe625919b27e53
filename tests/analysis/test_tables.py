from mobilecnn import list_models, published
from mobilecnn.analysis.tables import paper_tables, tables_markdown


def test_every_published_configuration_appears_in_the_tables():
    rows = [r for table in paper_tables().values() for r in table]
    shown = {(r.model, r.resolution) for r in rows}
    for name in list_models():
        pub = published(name)
        for res in (pub.macs if pub else {}):
            assert (name, res) in shown, (name, res)
    for r in rows:
        if r.published_macs_m is not None:
            assert published(r.model).macs_matches(r.macs_m * 1e6, r.resolution), r


def test_markdown_has_all_sections():
    text = tables_markdown()
    for heading in ("Table 1", "Table 2", "Table 5", "MobileNetV2", "Table 6", "Table 7"):
        assert heading in text
    assert "| 1.0 MobileNet-192 | `mobilenet_v1_x1_0` | 192 |" in text


def test_table7_rows_beside_the_published():
    from mobilecnn.analysis.tables import TABLE7_TITLE, segmentation_table

    rows = segmentation_table()
    assert len(rows) == 8 and [r.published.label for r in rows].count("ResNet-101") == 2
    for r in rows:
        if r.published.model is None:
            assert r.macs_b is None and r.diff_percent is None
        else:
            assert r.published.madds_matches(int(r.macs_b * 1e9)) and r.published.params_matches(int(r.params_m * 1e6))
    text = tables_markdown()
    assert TABLE7_TITLE in text
    assert ("| MNV2* | `deeplabv3_mobilenet_v2_x1_0` | 16 |  |  | 75.32 | 2.114 | 2.11 | 2.741 | 2.742 | 2.75 "
            "| -0.27% |") in text
    assert ("| MNet V1 | `deeplabv3_mobilenet_v1_x1_0` | 8 | yes | yes | 78.56 | 11.145 | 11.15 | 800.745 | 990.786 "
            "| 941.9 | +5.19% |") in text
    assert "| ResNet-101 | - | 8 | yes | yes | 82.70 | - | 58.16 | - | - | 4870.6 | - |" in text
    assert "| ResNet-101 | - | 16 | yes |  | 80.49 | - | 58.16 | - | - | 81.0 | - |" in text
