"""Class 6: links in an image folder are followed once; a loop neither repeats nor mislabels images."""

from mobilecnn.data import scan_image_folder


def test_symlink_loop_is_followed_once(tmp_path, make_folder):
    root = make_folder(tmp_path / "d", per_class=4, classes="ab")
    (root / "train" / "a" / "loop").symlink_to(root / "train", target_is_directory=True)
    (root / "train" / "a" / "b_again").symlink_to(root / "train" / "b", target_is_directory=True)
    samples, classes = scan_image_folder(root / "train")
    assert classes == ["a", "b"]
    assert len(samples) == 8
    assert [c for _, c in samples].count(0) == 4


def test_linked_folder_outside_is_followed(tmp_path, make_folder):
    root = make_folder(tmp_path / "d", per_class=2, classes="ab")
    extra = make_folder(tmp_path / "extra", per_class=3, classes="a")
    (root / "train" / "a" / "more").symlink_to(extra / "train" / "a", target_is_directory=True)
    samples, _ = scan_image_folder(root / "train")
    assert [c for _, c in samples].count(0) == 5
