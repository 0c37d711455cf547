"""Shards: a stable hash of the relative path picks each picture's shard; a shard's cache resumes as itself."""

import numpy as np
import pytest
from conftest import make_images

from headstart.cache import open_cache
from headstart.cache.shards import Shard, shard_of
from headstart.errors import CacheMismatchError, ShardError
from headstart.extractor.runner import extract


def test_every_picture_is_in_exactly_one_shard_and_keeps_it_when_pictures_are_added():
    paths = [f"cat/{i}.jpg" for i in range(2000)]
    before = shard_of(paths, 4)
    assert set(before) == {0, 1, 2, 3} and min(np.bincount(before)) > 400  # about a quarter each
    more = paths + [f"dog/{i}.jpg" for i in range(500)]
    np.testing.assert_array_equal(shard_of(more, 4)[:2000], before)
    assert shard_of(["./cat\\1.jpg"], 4)[0] == shard_of(["cat/1.jpg"], 4)[0]


def test_shards_do_not_follow_the_split():
    from headstart.heads.split import assign

    paths = [f"cat/{i}.jpg" for i in range(3000)]
    in_shard0 = shard_of(paths, 2) == 0
    train = assign(paths) == 0
    assert 0.6 < train[in_shard0].mean() < 0.8  # the split is ~70% train inside a shard too


@pytest.mark.parametrize(
    "shards, shard, fragment",
    [
        (4, None, "--shards N and --shard I together"),
        (None, 1, "--shards N and --shard I together"),
        (4, 4, "--shard from 0 to 3"),
        (0, 0, "--shards of at least 1"),
    ],
)
def test_bad_shard_options(shards, shard, fragment):
    with pytest.raises(ShardError, match=fragment):
        Shard.from_options(shards, shard)


def test_shard_caches_cover_the_folder_once_and_resume_as_themselves(image_folder, tiny_config, tmp_path):
    rows = []
    for i in range(3):
        res = extract(image_folder, tmp_path / f"p{i}.h5", tiny_config, batch_size=4, shards=3, shard=i)
        with open_cache(tmp_path / f"p{i}.h5") as c:
            assert Shard.from_json(c.shard) == Shard(i, 3) and c.complete
            rows.extend(c.paths)
        assert extract(image_folder, tmp_path / f"p{i}.h5", tiny_config, batch_size=4, shards=3, shard=i).extracted == 0
        assert res.extracted == len(c.paths)
    assert sorted(rows) == sorted(p.relative_to(image_folder).as_posix() for p in image_folder.rglob("*.jpg"))
    with pytest.raises(CacheMismatchError, match=r"shard 0 of 3\). Received: shard 1 of 3"):
        extract(image_folder, tmp_path / "p0.h5", tiny_config, batch_size=4, shards=3, shard=1)
    with pytest.raises(CacheMismatchError, match=r"shard 0 of 3\). Received: the whole folder"):
        extract(image_folder, tmp_path / "p0.h5", tiny_config, batch_size=4)


def test_a_shard_resumes_new_pictures_of_its_own_only(image_folder, tiny_config, tmp_path):
    extract(image_folder, tmp_path / "p.h5", tiny_config, batch_size=4, shards=2, shard=0)
    with open_cache(tmp_path / "p.h5") as c:
        before = set(c.paths)
    make_images(image_folder, per_class=12, seed=1)  # cat.6 ... cat.11 are new
    extract(image_folder, tmp_path / "p.h5", tiny_config, batch_size=4, shards=2, shard=0)
    with open_cache(tmp_path / "p.h5") as c:
        after = set(c.paths)
    assert before < after and all(shard_of([p], 2)[0] == 0 for p in after)
