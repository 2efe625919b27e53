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
