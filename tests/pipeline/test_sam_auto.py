"""Segment everything (`SamMaskGenerator`) against segment-anything's `SamAutomaticMaskGenerator`.

Same weights on both sides: the embedded shapes SAM (its PyTorch weights recovered exactly from
its ONNX files by `detseg.weights.sam_recover`) on held-out shapes images of three aspect
ratios, and a random-weight small SAM as in test_sam.py. Each reference mask must have its own
match with IoU >= 0.99 and the counts must agree within 2 %. The numpy ports of
segment-anything's helpers are checked against the originals on the same inputs.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from detseg.data.shapes import ShapesSpec, render_image
from detseg.errors import InputError
from detseg.pipeline.sam import SamPredictor
from detseg.pipeline.sam_auto import (
    MaskGeneratorSettings,
    SamMaskGenerator,
    build_point_grid,
    generate_crop_boxes,
    masks_to_boxes,
    near_crop_edge,
    remove_small_regions,
    stability_score,
)
from detseg.weights.builtin import default_sam

torch = pytest.importorskip("torch")
segment_anything = pytest.importorskip("segment_anything")
from segment_anything import SamAutomaticMaskGenerator  # noqa: E402
from segment_anything.utils import amg  # noqa: E402


def held_out_images() -> dict[str, np.ndarray]:
    """Three aspect ratios cut from held-out shapes images (seed 3, never trained on)."""
    a = render_image(ShapesSpec(4, 3), 0)[0]
    b = render_image(ShapesSpec(4, 3), 1)[0]
    return {"square_320": a, "wide_200x320": np.ascontiguousarray(a[40:240]),
            "tall_320x150": np.ascontiguousarray(b[:, 80:230])}


@pytest.fixture(scope="module")
def embedded_pair():
    """(recovered torch Sam, onnxruntime SamPredictor) of the embedded shapes SAM."""
    from detseg.weights.sam_recover import recover_sam

    encoder, decoder = default_sam()
    return recover_sam(encoder, decoder), SamPredictor.load(encoder, decoder, device="cpu")


def rles_of(records: list[dict]) -> list[dict]:
    out = []
    for r in records:
        seg = r["segmentation"] if "segmentation" in r else r
        out.append(dict(seg, counts=seg["counts"].encode("ascii")))
    return out


def assert_same_masks(ours: list[dict], ref: list[dict]) -> None:
    """Counts within 2 %, and a one-to-one match of IoU >= 0.99 for each reference mask."""
    assert abs(len(ours) - len(ref)) <= 0.02 * max(len(ref), 1), (len(ours), len(ref))
    if not ref:
        return
    ious = mask_utils.iou(rles_of(ours), rles_of(ref), [0] * len(ref))  # (ours, ref)
    used: set[int] = set()
    for j in np.argsort(-ious.max(axis=0)):
        order = [i for i in np.argsort(-ious[:, j]) if i not in used]
        assert order and ious[order[0], j] >= 0.99, (j, ious[:, j].max())
        used.add(int(order[0]))


def run_both(sam, ours: SamPredictor, image: np.ndarray, **kw):
    ref = SamAutomaticMaskGenerator(sam, output_mode="coco_rle", **kw).generate(image)
    got = SamMaskGenerator(ours, **kw).generate(image)
    return ref, got


# Relaxed thresholds: the 256 px shapes SAM has soft 64 x 64 logits, so SAM's default
# stability threshold keeps only a few masks; these keep many more to compare.
RELAXED = dict(points_per_side=16, pred_iou_thresh=0.6, stability_score_thresh=0.8)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["square_320", "wide_200x320", "tall_320x150"])
def test_matches_segment_anything_on_held_out_shapes(embedded_pair, name) -> None:
    sam, ours = embedded_pair
    image = held_out_images()[name]
    ref, got = run_both(sam, ours, image, **RELAXED)
    assert len(ref) >= 4, "too few masks for the comparison to mean anything"
    assert_same_masks(got.rles, ref)
    # same scores (the click behind a kept mask may differ where two clicks tie)
    np.testing.assert_allclose(np.sort(got.predicted_iou),
                               np.sort([r["predicted_iou"] for r in ref]), atol=1e-4)


@pytest.mark.slow
def test_matches_segment_anything_with_defaults(embedded_pair) -> None:
    sam, ours = embedded_pair
    ref, got = run_both(sam, ours, held_out_images()["square_320"])
    assert len(ref) >= 1
    assert_same_masks(got.rles, ref)


@pytest.mark.slow
def test_matches_segment_anything_with_crops_and_small_region_removal(embedded_pair) -> None:
    sam, ours = embedded_pair
    kw = dict(RELAXED, points_per_side=8, crop_n_layers=1, min_mask_region_area=40)
    ref, got = run_both(sam, ours, held_out_images()["wide_200x320"], **kw)
    assert len(ref) >= 4
    assert_same_masks(got.rles, ref)
    assert {tuple(b) for b in got.crop_boxes.tolist()} == {
        tuple(np.add(r["crop_box"][:2], 0).tolist() + [r["crop_box"][0] + r["crop_box"][2],
                                                       r["crop_box"][1] + r["crop_box"][3]])
        for r in ref
    }


@pytest.mark.slow
def test_matches_segment_anything_with_random_weights(tmp_path) -> None:
    from detseg.weights.export_sam import export_sam
    from detseg.weights.sam_arch import build_sam_small

    torch.manual_seed(0)
    sam = build_sam_small(image_size=256)
    with torch.no_grad():  # sharper logits, so that masks differ from click to click
        for mlp in sam.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(40)
    result = export_sam(None, "tiny_auto", tmp_path, model=sam)
    ours = SamPredictor.load(result.encoder_path, result.decoder_path, device="cpu")
    kw = dict(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.3,
              box_nms_thresh=1.0)  # speckled random masks all have the image as box
    rng = np.random.default_rng(0)
    for h, w in ((120, 200), (210, 90)):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ref, got = run_both(sam, ours, image, **kw)
        assert len(ref) >= 2
        assert_same_masks(got.rles, ref)


def test_comparison_fails_on_shifted_masks() -> None:
    """The matcher itself can fail: masks moved by a few pixels do not pass."""
    masks = np.zeros((2, 60, 80), bool)
    masks[0, 10:30, 10:30] = True
    masks[1, 35:55, 40:70] = True
    from detseg.pipeline.sam_auto import encode_rles

    shifted = np.roll(masks, 2, axis=2)
    assert_same_masks(encode_rles(masks), encode_rles(masks))
    with pytest.raises(AssertionError):
        assert_same_masks(encode_rles(shifted), encode_rles(masks))


# ---- numpy ports against segment-anything's amg helpers -----------------------------------
@pytest.mark.parametrize("n", [1, 4, 32])
def test_point_grid_matches(n) -> None:
    np.testing.assert_array_equal(build_point_grid(n), amg.build_point_grid(n))


@pytest.mark.parametrize("size,layers", [((480, 640), 1), ((1000, 333), 2), ((64, 64), 0)])
def test_crop_boxes_match(size, layers) -> None:
    assert generate_crop_boxes(size, layers, 512 / 1500) == amg.generate_crop_boxes(
        size, layers, 512 / 1500)


def test_stability_boxes_and_edges_match() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, (12, 40, 50)).astype(np.float32)
    logits[3] = -5  # an empty mask
    ref = amg.calculate_stability_score(torch.as_tensor(logits), 0.0, 1.0).numpy()
    np.testing.assert_allclose(stability_score(logits, 0.0, 1.0), ref, equal_nan=True)
    masks = logits > 1.5
    ref_boxes = amg.batched_mask_to_box(torch.as_tensor(masks)).numpy()
    np.testing.assert_array_equal(masks_to_boxes(masks), ref_boxes)
    crop = [10, 20, 60, 70]
    boxes = np.array([[0, 0, 10, 10], [5, 5, 45, 45], [25, 25, 30, 30]], float)
    np.testing.assert_array_equal(
        near_crop_edge(boxes, crop, [0, 0, 100, 100]),
        amg.is_box_near_crop_edge(torch.as_tensor(boxes), crop, [0, 0, 100, 100]).numpy())


@pytest.mark.parametrize("mode", ["holes", "islands"])
def test_small_region_removal_matches(mode) -> None:
    rng = np.random.default_rng(2)
    mask = rng.random((50, 60)) > 0.4
    ours, changed = remove_small_regions(mask, 8, mode)
    ref, ref_changed = amg.remove_small_regions(mask, 8, mode)
    assert changed == ref_changed
    np.testing.assert_array_equal(ours, ref)


# ---- API ----------------------------------------------------------------------------------
def test_predict_batch_equals_single_prompts_and_the_fallback_loop() -> None:
    encoder, decoder = default_sam()
    sam = SamPredictor.load(encoder, decoder, device="cpu")
    assert sam.batches_prompts
    image = held_out_images()["wide_200x320"]
    emb = sam.embed(image)
    points = np.array([[[50.0, 60.0]], [[200.0, 100.0]], [[300.0, 20.0]]])
    batch = sam.predict_batch(points, np.ones((3, 1)), embedding=emb)
    for b in range(3):
        one = sam.predict(point_coords=points[b], point_labels=np.ones(1), embedding=emb)
        np.testing.assert_allclose(batch.scores[b], one.scores, atol=1e-5)
        assert (batch.masks[b] != one.masks).mean() < 1e-3
    sam.batches_prompts = False  # an old export without a prompt batch axis: one run per prompt
    loop = sam.predict_batch(points, np.ones((3, 1)), embedding=emb)
    np.testing.assert_allclose(loop.scores, batch.scores, atol=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(points_per_side=0), "points_per_side"),
    (dict(pred_iou_thresh=1.5), "pred_iou_thresh"),
    (dict(crop_n_layers=-1), "crop_n_layers"),
])
def test_bad_settings_name_the_field(kwargs, match) -> None:
    with pytest.raises(InputError, match=match):
        MaskGeneratorSettings(**kwargs)


def test_generate_refuses_a_grey_image() -> None:
    sam = SamPredictor.load(*default_sam(), device="cpu")
    with pytest.raises(InputError, match=r"RGB uint8 \(H, W, 3\)"):
        SamMaskGenerator(sam).generate(np.zeros((20, 20), np.uint8))


def test_cli_writes_coco_results_with_rle_masks(tmp_path) -> None:
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for name, im in list(held_out_images().items())[:2]:
        Image.fromarray(im).save(folder / f"{name}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "masks.json"
    proc = subprocess.run(
        [sys.executable, "-m", "detseg", "segment", str(folder), "--everything", "--out", str(out),
         "--points-per-side", "12", "--stability-score-thresh", "0.85", "-q"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "broken.png" in proc.stdout
    records = json.loads(out.read_text())
    assert records and {r["category_id"] for r in records} == {1}
    assert {r["image_id"] for r in records} <= {"square_320.png", "wide_200x320.png"}
    for r in records[:5]:
        assert isinstance(r["segmentation"]["counts"], str)
        x, y, w, h = r["bbox"]
        assert mask_utils.toBbox(rles_of([r])[0]).tolist() == pytest.approx([x, y, w, h])
        assert 0.0 <= r["score"] <= 1.5


def test_cli_without_everything_says_what_to_add(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "detseg", "segment", str(tmp_path), "--out", str(tmp_path / "m.json")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert "add --everything" in proc.stderr
