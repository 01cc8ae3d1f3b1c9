"""The one folder scan used by `init --images`, `extract --images`, @-name/EXIF folders and retrieval."""

from __future__ import annotations

import pytest

from netvlad.data.images import list_images


def test_list_images_is_recursive_sorted_relative_and_skips_non_images(tmp_path):
    for rel in ["b.JPG", "a/z.png", "a/c.webp", "notes.txt", "a/anim.gif"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    (tmp_path / "dir.jpg").mkdir()  # a folder with an image suffix is not an image
    assert list_images(tmp_path) == ["a/anim.gif", "a/c.webp", "a/z.png", "b.JPG"]


def test_list_images_names_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere: image folder not found"):
        list_images(tmp_path / "nowhere")
