"""CocoEvaluator: update/merge/compute equals one evaluate() over everything, bit for bit."""

from __future__ import annotations

import pickle
from collections import defaultdict

import numpy as np
import pytest

from detseg.detections import Detections
from detseg.errors import InputError
from detseg.eval import evaluate
from detseg.eval.evaluator import CocoEvaluator
from tests.eval.synthetic import make_problem


def _by_image(results: list[dict]) -> dict:
    out: dict = defaultdict(list)
    for rec in results:
        out[rec["image_id"]].append(rec)
    return out


def _assert_same(a, b) -> None:
    assert np.array_equal(a.stats, b.stats)
    for name in ("precision", "recall", "scores"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_any_split_merged_in_any_order_equals_one_evaluation(seed, iou_type):
    gt, res = make_problem(seed, n_images=30, segm=iou_type == "segm")
    rng = np.random.default_rng(100 + seed)
    per_image = _by_image(res)
    images = [im["id"] for im in gt["images"]]
    # the reference reads the records in a shuffled image order (within an image, file order)
    shuffled = [rec for i in rng.permutation(list(per_image)) for rec in per_image[i]]
    reference = evaluate(gt, shuffled, iou_type)
    n_shards = int(rng.integers(1, 6))
    shard_of = rng.integers(0, n_shards, len(images))
    shards = [CocoEvaluator(gt, iou_type) for _ in range(n_shards)]
    for image_id, s in zip(rng.permutation(images), shard_of, strict=True):
        if image_id in per_image or rng.random() < 0.5:  # images without results: either way
            shards[s].update(image_id, per_image.get(image_id, []))
    order = rng.permutation(n_shards)
    merged = shards[order[0]]
    for i in order[1:]:
        merged.merge(pickle.loads(pickle.dumps(shards[i])))  # as if filled on another worker
    _assert_same(merged.compute(), reference)


def test_detections_updates_equal_the_records_they_become():
    gt, res = make_problem(3, n_images=20, score_decimals=None)
    reference = evaluate(gt, res, "bbox")
    ev = CocoEvaluator(gt, "bbox")
    for image_id, recs in _by_image(res).items():
        xywh = np.array([r["bbox"] for r in recs], np.float64)
        dets = Detections(
            boxes=np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1),
            scores=np.array([r["score"] for r in recs], np.float32),
            class_ids=np.array([r["category_id"] for r in recs], np.int64),
        )
        ev.update(image_id, dets)
    got = ev.compute()
    # float32 scores and the xyxy round trip may move values in the last bits; the numbers a
    # user reads must agree to 1e-6, and the matching is the same.
    np.testing.assert_allclose(got.stats, reference.stats, rtol=0, atol=1e-6)


def test_evaluating_a_stream_as_it_arrives_gives_the_final_numbers_at_every_step():
    gt, res = make_problem(1, n_images=12)
    per_image = _by_image(res)
    ev = CocoEvaluator(gt)
    seen: list[dict] = []
    for image_id, recs in per_image.items():
        ev.update(image_id, recs)
        seen += recs
        _assert_same(ev.compute(), evaluate(gt, seen))
    assert len(ev) == len(per_image)


@pytest.mark.parametrize("action, message", [
    (lambda ev, gt, res: ev.update(987654321, []), "unknown image id"),
    (lambda ev, gt, res: (ev.update(gt["images"][0]["id"], []),
                          ev.update(gt["images"][0]["id"], [])), "already updated"),
    (lambda ev, gt, res: ev.update(gt["images"][0]["id"], [{"image_id": gt["images"][1]["id"],
                                   "category_id": gt["categories"][0]["id"],
                                   "bbox": [0, 0, 1, 1], "score": 0.5}]), "field 'image_id'"),
    (lambda ev, gt, res: ev.update(gt["images"][0]["id"], [{"image_id": gt["images"][0]["id"],
                                   "category_id": gt["categories"][0]["id"],
                                   "bbox": [0, 0, "w", 1], "score": 0.5}]), "field 'bbox'"),
    (lambda ev, gt, res: ev.merge(CocoEvaluator(make_problem(9)[0])), "different ground truth"),
])
def test_bad_updates_and_merges_are_named(action, message):
    gt, res = make_problem(2, n_images=10)
    ev = CocoEvaluator(gt)
    with pytest.raises(InputError, match=message):
        action(ev, gt, res)


def test_an_image_in_two_shards_cannot_be_merged():
    gt, res = make_problem(2, n_images=10)
    image_id = gt["images"][0]["id"]
    a, b = CocoEvaluator(gt), CocoEvaluator(gt)
    a.update(image_id, [])
    b.update(image_id, [])
    with pytest.raises(InputError, match="updated in both evaluators"):
        a.merge(b)


def test_many_records_and_reset():
    # Sizes users have: a few thousand records per image in total, more than 255 per image.
    gt, res = make_problem(4, n_images=10, dets_per_image=400)
    ev = CocoEvaluator(gt)
    ev.update_many(_by_image(res))
    _assert_same(ev.compute(), evaluate(gt, res))
    ev.reset()
    assert len(ev) == 0 and ev.compute().stats.max() <= 0
