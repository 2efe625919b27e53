"""Class 7: any byte-valid file name works everywhere, corrupt-file skipping included."""

import io
import warnings

from PIL import Image

from mobilecnn.data.folder import FolderBatches, scan_image_folder


def test_truncated_jpeg_with_newline_in_its_name_is_skipped_mid_epoch(tmp_path, make_folder):
    root = make_folder(tmp_path / "d", per_class=4, classes="ab")
    buf = io.BytesIO()
    Image.open(root / "train" / "a" / "000.png").convert("RGB").save(buf, "JPEG", quality=90)
    bad = root / "train" / "a" / "bad\nname\ttab.jpg"
    bad.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])  # passes the header check, fails decoding
    samples, _ = scan_image_folder(root / "train")
    assert str(bad) in [p for p, _ in samples]
    batches = FolderBatches(samples, 9, train=True, resolution=32, mean=[0.5], std=[0.25], workers=0,
                            on_corrupt="skip", verify=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (x, y), = list(batches.batches(0))
    assert x.shape[0] == 9 and (y >= 0).all()
    assert batches.skipped == [str(bad)]
    message = " ".join(str(w.message) for w in caught)
    assert "bad\\nname\\ttab.jpg" in message and "\n" not in message
