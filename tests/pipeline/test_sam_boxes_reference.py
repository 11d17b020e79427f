"""`segment_boxes` (detector boxes -> SAM masks) against segment-anything's PyTorch predictor.

Same weights on both sides (a small random-weight SAM exported by detseg); every box's mask
must match segment-anything's `SamPredictor.predict(box=..., multimask_output=False)`.
"""

from __future__ import annotations

import numpy as np
import pytest

from detseg.detections import Detections
from detseg.errors import InputError
from detseg.pipeline.sam import SamPredictor
from detseg.pipeline.sam_boxes import segment_boxes

torch = pytest.importorskip("torch")
segment_anything = pytest.importorskip("segment_anything")

from detseg.weights.export_sam import export_sam  # noqa: E402
from detseg.weights.report import mask_iou  # noqa: E402
from detseg.weights.sam_arch import build_sam_small  # noqa: E402


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    torch.manual_seed(1)
    model = build_sam_small(image_size=256)
    result = export_sam(None, "boxes_test", tmp_path_factory.mktemp("sam"), model=model)
    return segment_anything.SamPredictor(model), SamPredictor.load(
        result.encoder_path, result.decoder_path, device="cpu"
    )


class CountingEncoder:
    """Wraps an encoder session and counts its runs."""

    def __init__(self, inner) -> None:
        self.inner, self.runs = inner, 0
        self.metadata = inner.metadata

    def run(self, feeds):
        self.runs += 1
        return self.inner.run(feeds)


def image_and_detections(h: int, w: int, n: int, seed: int) -> tuple[np.ndarray, Detections]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), np.uint8)
    image[h // 4: h // 2, w // 5: w // 2] = (230, 40, 40)
    x1 = rng.uniform(0, w * 0.6, n)
    y1 = rng.uniform(0, h * 0.6, n)
    boxes = np.stack([x1, y1, x1 + rng.uniform(8, w * 0.4, n), y1 + rng.uniform(8, h * 0.4, n)], 1)
    dets = Detections(
        boxes=boxes.astype(np.float32), scores=rng.uniform(0.3, 1, n).astype(np.float32),
        class_ids=rng.integers(0, 5, n), class_names={i: f"c{i}" for i in range(5)},
        image_size=(h, w),
    )
    return image, dets


@pytest.mark.parametrize(("h", "w"), [(240, 320), (300, 170)])
def test_masks_match_segment_anything_box_prompts(pair, h, w) -> None:
    ref, ours = pair
    ours._encoder = CountingEncoder(ours._encoder)
    ours.clear_cache()
    image, dets = image_and_detections(h, w, 7, seed=h)
    out = segment_boxes(ours, image, dets)

    assert ours._encoder.runs == 1  # one encoder run for all boxes
    np.testing.assert_array_equal(out.boxes, dets.boxes)
    np.testing.assert_array_equal(out.scores, dets.scores)
    np.testing.assert_array_equal(out.class_ids, dets.class_ids)
    assert out.class_names == dets.class_names and out.image_size == (h, w)
    assert out.masks.shape == (7, h, w) and out.masks.dtype == bool

    ref.set_image(image)
    nontrivial = 0
    for i, box in enumerate(dets.boxes):
        want, _, _ = ref.predict(box=box.astype(np.float64), multimask_output=False)
        assert mask_iou(out.masks[i], want[0]) >= 0.99, i
        nontrivial += 0 < want[0].mean() < 1
    assert nontrivial >= 3  # the comparison is not between empty or full masks


def test_a_kept_embedding_runs_no_encoder_and_gives_the_same_masks(pair) -> None:
    _, ours = pair
    image, dets = image_and_detections(200, 260, 4, seed=5)
    ours._encoder = CountingEncoder(ours._encoder)
    ours.clear_cache()
    embedding = ours.embed(image)
    runs = ours._encoder.runs
    from_embedding = segment_boxes(ours, embedding, dets)
    assert ours._encoder.runs == runs
    np.testing.assert_array_equal(from_embedding.masks, segment_boxes(ours, image, dets).masks)


def test_no_detections_give_an_empty_mask_stack(pair) -> None:
    _, ours = pair
    out = segment_boxes(ours, np.zeros((50, 70, 3), np.uint8), Detections.empty())
    assert out.masks.shape == (0, 50, 70) and len(out) == 0


def test_detections_of_another_image_size_are_refused(pair) -> None:
    _, ours = pair
    _, dets = image_and_detections(100, 120, 2, seed=0)
    with pytest.raises(InputError, match=r"an image of \(100, 120\).*given is \(80, 90\)"):
        segment_boxes(ours, np.zeros((80, 90, 3), np.uint8), dets)
