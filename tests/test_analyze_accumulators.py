"""Mergeable accumulators against brute-force numpy references, and split+merge = single pass."""
import pickle

import numpy as np
import pytest

from engine.analyze.accumulators import Embeddings, IoUCounts, Quantile, TopK
from engine.errors import UsageError


def _values(rng, n):
    """Columns shaped like activations: ReLU'd normal (half zeros), exponential, lognormal, narrow,
    and a pre-activation of both signs."""
    return np.stack([np.maximum(rng.normal(size=n), 0), rng.exponential(size=n), rng.lognormal(size=n),
                     rng.normal(3, 0.01, size=n), rng.normal(-2, 3, size=n)], 1).astype(np.float32)


def _feed(acc, values, step):
    for i in range(0, len(values), step):
        acc.update(values[i:i + step])
    return acc


@pytest.mark.parametrize("n", [1, 2, 7, 500, 3000])
def test_quantile_is_exact_on_small_sets(n):
    values = _values(np.random.default_rng(n), n)
    for q in (0.995, 0.5, 0.9):
        acc = _feed(Quantile(5, q=q, tail=64 if q == 0.995 else 4096), values, 37)
        np.testing.assert_allclose(acc.result(), np.quantile(values.astype(np.float64), q, axis=0), rtol=0, atol=1e-12)


def test_quantile_within_one_percent_rank_error_on_a_large_set():
    values = _values(np.random.default_rng(1), 1_000_000)
    q = 0.995
    est = _feed(Quantile(5, q=q, bins=4096, tail=256), values, 65536).result()
    rank = (values <= est.astype(np.float32)).mean(axis=0)
    assert np.all(np.abs(rank - q) <= 0.01)  # the stated goal: 1 % rank error
    assert np.all(np.abs(rank - q) <= 0.01 * (1 - q))  # measured: within 1 % of the top-0.5 % count


def test_quantile_memory_is_bounded():
    acc = _feed(Quantile(2, bins=128, tail=16), np.random.default_rng(2).random((50_000, 2)), 1000)
    assert acc.hist.shape == (2, 128) and acc.top.shape[1] <= 16


def test_quantile_split_and_merge_equals_single_pass():
    values = _values(np.random.default_rng(3), 40_000)
    whole = _feed(Quantile(5, bins=256, tail=32), values, 1000)
    parts = [_feed(Quantile(5, bins=256, tail=32), chunk, 700) for chunk in np.array_split(values, [5, 12_000, 12_001, 30_000])]
    merged = parts[0]
    for part in parts[1:]:
        merged.merge(part)
    np.testing.assert_array_equal(merged.hist, whole.hist)
    np.testing.assert_array_equal(merged.result(), whole.result())
    small = _values(np.random.default_rng(4), 300)
    one = _feed(Quantile(5), small, 50)
    two = _feed(Quantile(5), small[:120], 50).merge(_feed(Quantile(5), small[120:], 50))
    np.testing.assert_array_equal(one.result(), two.result())
    with pytest.raises(UsageError):
        one.merge(Quantile(4))


def test_quantile_shipped_between_processes_merges_as_the_original():
    """Pickling (a Ray shard's part) keeps the top ``tail`` values and an int32 histogram only."""
    values = _values(np.random.default_rng(5), 3_000)
    parts = [_feed(Quantile(5, tail=400), chunk, 100) for chunk in np.array_split(values, 3)]
    assert parts[0].top.shape[1] > 400
    shipped = [pickle.loads(pickle.dumps(p)) for p in parts]
    assert shipped[0].top.shape[1] == 400 and shipped[0].hist.dtype == np.int64
    whole = _feed(Quantile(5, tail=400), values, 100)
    for merged in (parts, shipped):
        for part in merged[1:]:
            merged[0].merge(part)
        np.testing.assert_array_equal(merged[0].hist, whole.hist)
        np.testing.assert_array_equal(merged[0].result(), whole.result())


def _iou_reference(masks, maps, categories, concept_category):
    """Plain per-image, per-concept boolean arithmetic (Broden: only images labelling the category)."""
    units, concepts = masks.shape[1], len(concept_category)
    inter, union = np.zeros((units, concepts)), np.zeros((units, concepts))
    for mask, image_maps in zip(masks, maps):
        for c in range(1, concepts):
            category = categories[concept_category[c]]
            planes = image_maps.get(category, [])
            if len(planes) == 0:
                continue
            label_area = sum(int((plane == c).sum()) for plane in planes)
            for u in range(units):
                i = sum(int((mask[u] & (plane == c)).sum()) for plane in planes)
                inter[u, c] += i
                union[u, c] += mask[u].sum() + label_area - i
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _concept_batch(rng, n, units=5, size=(6, 7)):
    categories = ["object", "color", "scene"]
    concept_category = np.array([-1, 0, 0, 0, 1, 1, 2, 2])
    masks = rng.random((n, units, *size)) < 0.3
    maps = []
    for _ in range(n):
        image = {}
        if rng.random() < 0.7:  # object: sometimes two planes (parts overlap)
            image["object"] = np.where(rng.random((rng.integers(1, 3), *size)) < 0.6, rng.integers(1, 4, size), 0)
        if rng.random() < 0.6:
            image["color"] = rng.choice([0, 4, 5], size=(1, *size))
        if rng.random() < 0.5:  # a whole-image label fills a plane
            image["scene"] = np.full((1, *size), rng.choice([6, 7]))
        maps.append(image)
    return masks, maps, categories, concept_category


def _pixels(masks):
    return np.nonzero(masks.reshape(len(masks), masks.shape[1], -1))


def test_iou_counts_match_brute_force():
    masks, maps, categories, concept_category = _concept_batch(np.random.default_rng(5), 12)
    acc = IoUCounts(masks.shape[1], categories, concept_category)
    acc.update(_pixels(masks[:5]), maps[:5])
    acc.update(_pixels(masks[5:]), maps[5:])
    np.testing.assert_allclose(acc.result(), _iou_reference(masks, maps, categories, concept_category), rtol=1e-12)
    assert acc.result()[:, 0].sum() == 0


def test_iou_counts_split_and_merge_equals_single_pass():
    masks, maps, categories, concept_category = _concept_batch(np.random.default_rng(6), 10)
    whole = IoUCounts(5, categories, concept_category)
    whole.update(_pixels(masks), maps)
    merged = IoUCounts(5, categories, concept_category)
    for part in (slice(0, 3), slice(3, 4), slice(4, 10)):
        shard = IoUCounts(5, categories, concept_category)
        shard.update(_pixels(masks[part]), maps[part])
        merged.merge(shard)
    np.testing.assert_array_equal(merged.intersection, whole.intersection)
    np.testing.assert_array_equal(merged.result(), whole.result())


def test_topk_matches_brute_force_sort_and_merges():
    rng = np.random.default_rng(7)
    maps = rng.integers(0, 20, (30, 4, 5, 6)).astype(np.float32)  # integer values: many ties
    k = 6
    whole = TopK(4, k)
    for start in range(0, 30, 7):
        whole.update(maps[start:start + 7], start)
    got = whole.result()
    peaks = maps.reshape(30, 4, -1).max(axis=2)
    for c in range(4):
        order = sorted(range(30), key=lambda i: (-peaks[i, c], i))[:k]
        np.testing.assert_array_equal(got["image"][c], order)
        np.testing.assert_array_equal(got["value"][c], peaks[order, c])
        for i, y, x in zip(got["image"][c], got["y"][c], got["x"][c]):
            assert maps[i, c, y, x] == peaks[i, c]
            assert (maps[i, c].ravel()[: y * 6 + x] < peaks[i, c]).all()  # the first maximum
    merged = TopK(4, k)
    for part in (slice(0, 11), slice(11, 12), slice(12, 30)):
        shard = TopK(4, k)
        shard.update(maps[part], part.start)
        merged.merge(shard)
    for name in TopK.FIELDS:
        np.testing.assert_array_equal(merged.result()[name], got[name])


def test_embeddings_shards_merge_into_the_single_pass_array(tmp_path):
    rows = np.random.default_rng(8).random((20, 3)).astype(np.float32)
    whole = Embeddings(20, 3, path=tmp_path / "features.npy")
    whole.update(rows, 0)
    shards = [Embeddings(20, 3), Embeddings(20, 3)]
    shards[0].update(rows[:7], 0)
    shards[1].update(rows[7:], np.arange(7, 20))
    merged = Embeddings(20, 3).merge(shards[0]).merge(shards[1])
    np.testing.assert_array_equal(merged.result(), whole.result())
    np.testing.assert_array_equal(np.load(tmp_path / "features.npy"), rows)
    with pytest.raises(UsageError, match="never filled"):
        shards[0].result()


def test_quantile_told_its_total_keeps_no_histogram_and_gives_the_same_result():
    rng = np.random.default_rng(4)
    values = np.maximum(rng.standard_normal((3000, 5)), 0).astype(np.float32)  # ReLU-like: many zeros
    whole = Quantile(5, q=0.99, tail=64)
    whole.update(values)
    parts = [Quantile(5, q=0.99, tail=64, total=3000) for _ in range(3)]
    for part, rows in zip(parts, np.array_split(values, 3)):
        part.update(rows)
    merged = parts[0].merge(parts[1]).merge(parts[2])
    assert merged.hist.size == 0
    np.testing.assert_array_equal(merged.result(), whole.result())
    np.testing.assert_allclose(merged.result(), np.quantile(values, 0.99, axis=0), rtol=1e-6)
    with pytest.raises(ValueError, match="total=3000"):
        merged.update(values[:1])
