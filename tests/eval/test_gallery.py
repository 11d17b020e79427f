"""Per-detection TIDE verdicts, the error gallery, its drawing and the report section."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

from detseg.detections import Detections
from detseg.eval.analysis import prf_at
from detseg.eval.drawing import class_color, draw_gt_vs_pred, place_labels
from detseg.eval.error_analysis import FP_TYPES, detection_errors, tide_errors
from detseg.eval.gallery import build_gallery, image_costs, select_examples
from detseg.eval.match import box_iou_pairs
from detseg.eval.metrics import evaluate
from detseg.eval.report import write_report
from tests.eval.synthetic import make_problem


@pytest.fixture(scope="module")
def ev_big():
    gt, res = make_problem(71, n_images=300, n_cats=6)  # > 255 images, a few thousand records
    return evaluate(gt, res)


def _loop_types(ev, t_f=0.5, t_b=0.1):
    """TIDE's false-positive types by a plain loop over detections (reference)."""
    de = detection_errors(ev, t_f, t_b)
    gt, res = ev.gt, ev.results
    out = {}
    for pos in np.flatnonzero(de.fp):
        d = de.det[pos]
        g = np.flatnonzero((gt.img == res.img[d]) & ~gt.crowd)
        if g.size:
            ious = box_iou_pairs(np.repeat(res.bbox[d][None], g.size, 0), gt.bbox[g], gt.crowd[g])
        else:
            ious = np.zeros(0)
        same = gt.cat[g] == res.cat[d]
        s = ious[same].max(initial=0.0)
        o = ious[~same].max(initial=0.0)
        if max(s, o) < t_b:
            t = "background"
        elif t_b <= s < t_f:
            t = "localisation"
        elif o >= t_f:
            t = "classification"
        elif s >= t_f:
            t = "duplicate"
        elif t_b <= o < t_f:
            t = "both"
        else:
            t = "other"
        out[int(d)] = t
    return out


def test_detection_errors_match_a_plain_loop_and_the_tide_counts(ev_big):
    de = detection_errors(ev_big)
    ref = _loop_types(ev_big)
    got = {int(de.det[p]): de.type_name(de.kind[p]) for p in np.flatnonzero(de.fp)}
    assert got == ref
    counts = tide_errors(ev_big)["counts"]
    for c, name in enumerate(FP_TYPES):
        assert counts[name] == int((de.kind == c).sum()), name
    assert counts["missed"] == int(de.missed.sum())
    # the ground truth named for an error is the one its IoU was measured against
    for p in np.flatnonzero(np.isin(de.kind, (1, 2, 3, 4)))[:200]:
        d, g = de.det[p], de.gt[p]
        iou = box_iou_pairs(ev_big.results.bbox[d][None], ev_big.gt.bbox[g][None], ev_big.gt.crowd[g][None])
        assert iou[0] == pytest.approx(de.iou[p])


def test_image_costs_add_up_to_prf(ev_big):
    de = detection_errors(ev_big)
    rows = image_costs(ev_big, de, score=0.3)
    prf = prf_at(ev_big, 0.5, 0.3)["overall"]
    assert sum(r["tp"] for r in rows) <= prf["tp"]  # images with cost 0 are left out
    assert sum(r["fp"] for r in rows) == prf["fp"]
    assert sum(r["fn"] for r in rows) == prf["fn"]
    costs = [r["cost"] for r in rows]
    assert costs == sorted(costs, reverse=True) and all(c > 0 for c in costs)
    for r in rows:
        assert r["cost"] == r["fp"] + r["fn"]
        assert r["fp"] == sum(r[f"fp_{t}"] for t in FP_TYPES) or r["fp"] > sum(r[f"fp_{t}"] for t in FP_TYPES)


def test_examples_are_capped_per_class_and_type_worst_first(ev_big):
    de = detection_errors(ev_big)
    ex = select_examples(ev_big, de, per_class=2, min_score=0.0)
    seen: dict[tuple[str, int], list] = {}
    for e in ex:
        seen.setdefault((e.error, e.category), []).append(e)
    assert max(len(v) for v in seen.values()) == 2
    for (err, k), v in seen.items():
        if err == "missed":
            continue
        code = FP_TYPES.index(err)
        sel = (de.kind == code) & (ev_big.results.cat[de.det] == k)
        best = np.sort(ev_big.results.score[de.det][sel])[::-1][:2]
        assert [e.score for e in v] == pytest.approx(best.tolist())


def test_place_labels_never_overlap():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 150, (60, 2))
    boxes = np.c_[xy, xy + rng.uniform(5, 40, (60, 2))]
    sizes = rng.integers(20, 60, (60, 2)) // [1, 3]
    spots = place_labels(boxes, sizes, (200, 200))
    rects = [(x, y, x + w, y + h) for s, (w, h) in zip(spots, sizes, strict=True) if s for x, y in [s]]
    assert len(rects) >= 15
    for i, a in enumerate(rects):
        assert 0 <= a[0] and a[2] <= 200 and 0 <= a[1] and a[3] <= 200
        for b in rects[i + 1:]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3])


def test_ground_truth_is_dashed_and_predictions_solid():
    img = np.zeros((200, 200, 3), np.uint8)
    box = np.array([[40, 40, 160, 160]], np.float32)
    one = Detections(box, np.ones(1, np.float32), np.zeros(1, np.int64))
    empty = Detections.empty()

    def edge_coverage(out):
        edge = out[40, 60:140].astype(int).sum(1) > 0  # top edge, away from the label
        return edge.mean()

    g = draw_gt_vs_pred(img, one, empty, {0: "a"}, max_side=200, label_all=False)
    p = draw_gt_vs_pred(img, empty, one, {0: "a"}, max_side=200, label_all=False)
    assert 0.3 < edge_coverage(g) < 0.8
    assert edge_coverage(p) == 1.0
    assert len({class_color(k) for k in range(80)}) == 80


def _write_images(gt: dict, folder, size=(240, 320)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for im in gt["images"]:
        arr = rng.integers(0, 255, (size[0] // 8, size[1] // 8, 3), dtype=np.uint8)
        cv2.imwrite(str(folder / im["file_name"]), cv2.resize(arr, size[::-1]))


@pytest.fixture(scope="module")
def problem_on_disk(tmp_path_factory):
    d = tmp_path_factory.mktemp("gal")
    gt, res = make_problem(72, n_images=40, n_cats=4)
    _write_images(gt, d / "images")
    (d / "instances.json").write_text(json.dumps(gt))
    (d / "results.json").write_text(json.dumps(res))
    return d


def test_report_has_a_gallery_when_images_are_found(problem_on_disk, tmp_path):
    ev = evaluate(problem_on_disk / "instances.json", problem_on_disk / "results.json")
    files = write_report(ev, tmp_path, score=0.3, gallery=2)
    html = files["html"].read_text()
    data = json.loads(files["json"].read_text())["gallery"]
    assert data["note"] is None and data["n_examples"] > 10
    thumbs = re.findall(r"data:image/jpeg;base64,", html)
    assert len(thumbs) == data["n_examples"] + data["n_views"]
    assert "Images by cost" in html and "Error gallery" in html
    for anchor in re.findall(r"href='#([^']+)'", html):  # every link of the table has a target
        assert f"id='{anchor}'" in html
    per = {}
    for e in data["examples"]:
        per[(e["error"], e["category"])] = per.get((e["error"], e["category"]), 0) + 1
    assert max(per.values()) <= 2
    assert {e["error"] for e in data["examples"]} >= {"background", "localisation", "missed"}


def test_report_without_images_has_one_note(tmp_path):
    gt, res = make_problem(73, n_images=10)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(res))
    ev = evaluate(tmp_path / "gt.json", tmp_path / "res.json")
    files = write_report(ev, tmp_path / "out", gallery=3)
    html = files["html"].read_text()
    assert "data:image/jpeg" not in html
    assert html.count("error gallery left out: the images were not found") == 1
    # in memory ground truth: same, no error
    files = write_report(evaluate(gt, res), tmp_path / "out2", gallery=3)
    assert "error gallery left out" in files["html"].read_text()


def test_unreadable_images_are_skipped_and_counted(ev_big):
    g = build_gallery(ev_big, lambda i: None if i % 2 else np.zeros((240, 320, 3), np.uint8),
                      per_class=1, min_score=0.0)
    assert g.n_unreadable > 0 and g.examples
    assert all(e.img % 2 == 0 for e in g.examples)
    assert "could not be read" in g.note


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "detseg", "eval", *map(str, args)],
                          capture_output=True, text=True)


@pytest.mark.slow
def test_cli_gallery_options(problem_on_disk, tmp_path):
    gt, res = problem_on_disk / "instances.json", problem_on_disk / "results.json"
    p = _cli("--gt", gt, "--pred", res, "--out", tmp_path / "a", "--gallery", "1", "-q")
    assert p.returncode == 0, p.stderr
    a = json.loads((tmp_path / "a" / "report.json").read_text())["gallery"]
    assert a["per_class"] == 1 and a["n_examples"] > 0
    p = _cli("--gt", gt, "--pred", res, "--out", tmp_path / "b", "--no-gallery", "-q")
    assert p.returncode == 0, p.stderr
    assert "data:image/jpeg" not in (tmp_path / "b" / "report.html").read_text()
    # images elsewhere: found through --images
    moved = tmp_path / "gt_alone.json"
    moved.write_text(gt.read_text())
    p = _cli("--gt", moved, "--pred", res, "--out", tmp_path / "c", "-q")
    assert p.returncode == 0 and "images were not found" in p.stderr
    p = _cli("--gt", moved, "--pred", res, "--out", tmp_path / "d", "-q",
             "--images", problem_on_disk / "images")
    assert p.returncode == 0, p.stderr
    assert "data:image/jpeg" in (tmp_path / "d" / "report.html").read_text()


def test_gallery_on_the_real_coco_images(coco11, tmp_path):
    from tests.eval.reference import jitter_gt

    gt = json.loads(coco11.read_text())
    res = jitter_gt(gt, 5)
    ev = evaluate(coco11, res)
    files = write_report(ev, tmp_path, gallery=3)
    data = json.loads(files["json"].read_text())["gallery"]
    assert data["note"] is None and data["n_examples"] > 0
    assert files["html"].stat().st_size < 5_000_000


def test_masks_are_drawn_as_their_outlines_not_their_boxes():
    img = np.zeros((200, 200, 3), np.uint8)
    box = np.array([[40, 40, 160, 160]], np.float32)
    tri = [np.array([[40, 40], [160, 40], [40, 160]], np.float64)]  # the box's upper-left half
    one = Detections(box, np.ones(1, np.float32), np.zeros(1, np.int64))
    empty = Detections.empty()
    for kw in ({"pred_outlines": [tri]}, {"gt_outlines": [tri]}):
        gt, pred = (empty, one) if "pred_outlines" in kw else (one, empty)
        as_box = draw_gt_vs_pred(img, gt, pred, {0: "a"}, max_side=200, label_all=False)
        as_mask = draw_gt_vs_pred(img, gt, pred, {0: "a"}, max_side=200, label_all=False, **kw)
        on = lambda out, y, x: out[y - 1:y + 2, x - 1:x + 2].any()  # noqa: E731
        assert on(as_mask, 100, 100) and not on(as_box, 100, 100)  # the diagonal
        assert on(as_box, 159, 159) and not on(as_mask, 150, 159)  # the box's far corner
    # an empty outline (no mask) falls back to the box
    both = draw_gt_vs_pred(img, empty, one, {0: "a"}, max_side=200, label_all=False, pred_outlines=[[]])
    assert np.array_equal(both, draw_gt_vs_pred(img, empty, one, {0: "a"}, max_side=200, label_all=False))


def test_segm_gallery_draws_masks(tmp_path):
    gt, res = make_problem(73, n_images=12, n_cats=3, segm=True)
    _write_images(gt, tmp_path / "images")
    (tmp_path / "instances.json").write_text(json.dumps(gt))
    calls = []
    import detseg.eval.gallery as gallery_mod

    real = gallery_mod.segmentation_outlines

    def spy(seg, h, w, **kw):
        calls.append((h, w))
        return real(seg, h, w, **kw)

    ev_s = evaluate(tmp_path / "instances.json", res, "segm")
    ev_b = evaluate(tmp_path / "instances.json", res, "bbox")
    from detseg.eval.gallery import gallery_for

    try:
        gallery_mod.segmentation_outlines = spy
        g_s, _ = gallery_for(ev_s, per_class=2)
    finally:
        gallery_mod.segmentation_outlines = real
    g_b, _ = gallery_for(ev_b, per_class=2)
    assert g_s.note is None and len(g_s.examples) > 5
    assert calls and all(hw == (240, 320) for hw in calls)
    # a mask example that is also a box example (same detection, same error) looks different
    key = lambda e: (e.error, e.det, e.gt)  # noqa: E731
    boxes = {key(e): e.thumb for e in g_b.examples}
    same = [e for e in g_s.examples if key(e) in boxes]
    assert same and any(e.thumb != boxes[key(e)] for e in same)


def _loop_dashes(box, dash=6):
    """The dashes of one rectangle, edge by edge (the plain loop dash_segments vectorises)."""
    x1, y1, x2, y2 = box
    corners = np.array([(x1, y1), (x2, y1), (x2, y2), (x1, y2), (x1, y1)], np.float64)
    out = []
    for a, b in zip(corners[:-1], corners[1:], strict=True):
        n = max(1, int(np.abs(b - a).max()) // dash)
        for s in range(0, n, 2):
            out.append([a + (b - a) * s / n, a + (b - a) * min(1.0, s / n + 1 / n)])
    return np.rint(np.array(out)).astype(np.int32)


def test_dash_segments_equal_a_plain_loop():
    from detseg.eval.drawing import dash_segments

    rng = np.random.default_rng(3)
    xy = rng.integers(-20, 300, (300, 2))
    boxes = np.c_[xy, xy + rng.integers(0, 200, (300, 2))].astype(np.float64)
    boxes[:5, 2:] = boxes[:5, :2]  # empty boxes still get their one-piece edges
    seg, owner = dash_segments(boxes)
    assert np.array_equal(seg, np.concatenate([_loop_dashes(b) for b in boxes]))
    assert np.array_equal(owner, np.concatenate([np.full(len(_loop_dashes(b)), i) for i, b in enumerate(boxes)]))


@pytest.mark.parametrize("size, crop", [((2000, 3000), None), ((1000, 1000), (13, 7, 990, 977)),
                                        ((480, 640), (100, 50, 553, 431)), ((120, 90), None)])
def test_boxes_land_on_the_object_at_every_reduction(size, crop):
    """A white square under a box of the same coordinates: in the drawn view the box's line
    and the square's edge fall on the same pixels (within one), whatever the reduction."""
    h, w = size
    img = np.zeros((h, w, 3), np.uint8)
    x0, y0, x1, y1 = int(w * 0.3), int(h * 0.35), int(w * 0.7), int(h * 0.8)
    img[y0:y1, x0:x1] = 255
    box = Detections(np.array([[x0, y0, x1, y1]], np.float32), np.ones(1, np.float32), np.zeros(1, np.int64))
    plain = draw_gt_vs_pred(img, Detections.empty(), Detections.empty(), crop=crop, max_side=200)
    drawn = draw_gt_vs_pred(img, Detections.empty(), box, {0: "a"}, crop=crop, max_side=200, label_all=False)
    assert max(plain.shape[:2]) <= 200
    white = plain[..., 0] > 127
    ys, xs = np.nonzero(white)
    line = np.any(drawn != plain, axis=2)
    ly, lx = np.nonzero(line)
    for got, want in ((lx.min(), xs.min()), (lx.max(), xs.max()), (ly.min(), ys.min()), (ly.max(), ys.max())):
        assert abs(int(got) - int(want)) <= 1
