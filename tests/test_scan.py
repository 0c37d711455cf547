"""Dataset scan: layout rules and every scan error."""

from pathlib import Path

import pytest

from headstart.errors import DatasetError
from headstart.extractor.scan import find_images, scan_dataset


def touch(path: Path, data: bytes = b"x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_classes_sorted_files_recursive_and_case_insensitive(tmp_path):
    for rel in [
        "Dog/b.JPG",
        "Dog/a.png",
        "Cat/sub/z.jpeg",
        "Cat/y.WebP",
        "Cat/notes.txt",
        "Cat/Thumbs.db",
        "Cat/.hidden.jpg",
        ".git/x.jpg",
    ]:
        touch(tmp_path / rel)
    ds = scan_dataset(tmp_path)
    assert ds.class_names == ("Cat", "Dog")
    assert ds.items == (("Cat/sub/z.jpeg", 0), ("Cat/y.WebP", 0), ("Dog/a.png", 1), ("Dog/b.JPG", 1))
    assert ds.counts() == {"Cat": 2, "Dog": 2}


def test_exclude_and_limit_per_class(tmp_path):
    for c in ("a", "b", "c"):
        for i in range(5):
            touch(tmp_path / c / f"{i}.jpg")
    ds = scan_dataset(tmp_path, exclude=["b"], limit_per_class=2)
    assert ds.class_names == ("a", "c")
    assert [p for p, _ in ds.items] == ["a/0.jpg", "a/1.jpg", "c/0.jpg", "c/1.jpg"]
    assert [label for _, label in ds.items] == [0, 0, 1, 1]


@pytest.mark.parametrize(
    "layout, options, message",
    [
        (None, {}, "does not exist"),
        ([], {}, "no sub-folders"),
        (["a/1.jpg"], {}, "at least two classes"),
        (["a/1.jpg", "b/notes.txt"], {}, "b (none)"),
        (["a/1.jpg", "b/1.jpg"], {"exclude": ["b"]}, "at least two classes"),
        (["a/1.jpg", "b/1.jpg"], {"exclude": ["zebra"]}, "Received: zebra"),
        (["a/1.jpg", "b/1.jpg"], {"limit_per_class": 0}, "at least 1"),
    ],
)
def test_scan_errors_say_what_was_expected(tmp_path, layout, options, message):
    root = tmp_path / "data"
    if layout is not None:
        root.mkdir()
        for rel in layout:
            touch(root / rel)
    with pytest.raises(DatasetError) as err:
        scan_dataset(root, **options)
    assert message in str(err.value)
    assert "Expected" in str(err.value)


def test_a_file_is_not_a_dataset(tmp_path):
    touch(tmp_path / "x.jpg")
    with pytest.raises(DatasetError, match="a file"):
        scan_dataset(tmp_path / "x.jpg")


def test_find_images_takes_files_as_given_and_searches_folders(tmp_path):
    touch(tmp_path / "d" / "2.png")
    touch(tmp_path / "d" / "1.jpg")
    touch(tmp_path / "d" / "readme.md")
    touch(tmp_path / "odd.name")
    assert find_images([tmp_path / "odd.name", tmp_path / "d"]) == [
        tmp_path / "odd.name",
        tmp_path / "d" / "1.jpg",
        tmp_path / "d" / "2.png",
    ]


# -- symbolic links: each real folder once, loops reported --------------------------------------


def nine_cats(tmp_path: Path) -> Path:
    for i in range(9):
        touch(tmp_path / "Cat" / f"{i}.jpg")
    touch(tmp_path / "Dog" / "d.jpg")
    return tmp_path


def test_a_symbolic_link_loop_is_reported_once_and_not_followed(tmp_path, caplog):
    """Issue 7: `ln -s . loop` in a class folder made 9 pictures 369 rows."""
    root = nine_cats(tmp_path)
    (root / "Cat" / "loop").symlink_to(".")
    (root / "Cat" / "sub").mkdir()
    (root / "Cat" / "sub" / "up").symlink_to("..")
    with caplog.at_level("WARNING"):
        ds = scan_dataset(root)
    assert ds.counts() == {"Cat": 9, "Dog": 1}
    assert [p for p, _ in ds.skipped_links] == ["Cat/loop", "Cat/sub/up"]
    assert all("symbolic link loop back to" in reason for _, reason in ds.skipped_links)
    assert sum("not following" in r.message for r in caplog.records) == 2


def test_a_folder_reached_twice_is_scanned_once(tmp_path):
    root = nine_cats(tmp_path / "data")
    outside = tmp_path / "more"
    touch(outside / "x.jpg")
    (root / "Dog" / "a").symlink_to(outside)
    (root / "Dog" / "b").symlink_to(outside)
    ds = scan_dataset(root)
    assert ds.items[-2:] == (("Dog/a/x.jpg", 1), ("Dog/d.jpg", 1))
    assert ds.skipped_links == (("Dog/b", f"the folder {root / 'Dog' / 'a'} again"),)


def test_a_class_folder_that_links_to_the_root_is_not_a_class_of_everything(tmp_path):
    root = nine_cats(tmp_path)
    (root / "All").symlink_to(root)
    with pytest.raises(DatasetError, match="All"):
        scan_dataset(root)


def test_find_images_uses_the_same_walk(tmp_path):
    """Issue 7: predict on a folder with a loop predicted each picture ~40 times."""
    from headstart.extractor.scan import find_pictures

    root = nine_cats(tmp_path)
    (root / "Cat" / "loop").symlink_to(".")
    assert len(find_images([root / "Cat"])) == 9
    found = find_pictures([root])
    assert len(found.files) == 10 and [p.name for p, _ in found.skipped_links] == ["loop"]
