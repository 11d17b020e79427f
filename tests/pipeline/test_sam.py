"""detseg's onnxruntime SAM predictor against segment-anything's PyTorch SamPredictor.

The model is a small SAM (segment-anything's own modules, 256 px input) with seeded random
weights, exported by detseg. Random weights give masks that are neither empty nor full for
these prompts (checked below), and the comparison also checks the low-res logits and the
scores, so a wrong coordinate transform, resize or crop fails it (see the sensitivity test).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detseg.errors import InputError, ModelError
from detseg.pipeline.sam import (
    SamPrediction,
    SamPredictor,
    preprocess_shape,
    resize_longest_side,
    transform_coords,
)

torch = pytest.importorskip("torch")
segment_anything = pytest.importorskip("segment_anything")

from detseg.weights.export_sam import export_sam  # noqa: E402
from detseg.weights.sam_arch import build_sam_small  # noqa: E402

REAL_IMAGES = [
    "000000000139.jpg",
    "000000000285.jpg",
    "000000000776.jpg",
]  # 640x426, 586x640, 428x640


@pytest.fixture(scope="module")
def sam_pair(tmp_path_factory):
    """(torch Sam, detseg SamPredictor) with the same weights."""
    torch.manual_seed(0)
    sam = build_sam_small(image_size=256)
    result = export_sam(None, "tiny_test", tmp_path_factory.mktemp("sam"), model=sam)
    assert result.passed, result.report_path
    return sam, SamPredictor.load(result.encoder_path, result.decoder_path, device="cpu")


@pytest.fixture(scope="module")
def reference(sam_pair):
    return segment_anything.SamPredictor(sam_pair[0])


def synthetic_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // max(w, 1), yy * 255 // max(h, 1), np.full_like(xx, 90)], -1)
    img[(yy - h / 2) ** 2 / (h / 4) ** 2 + (xx - w / 2) ** 2 / (w / 4) ** 2 < 1] = (200, 30, 60)
    return np.clip(img + rng.integers(-20, 21, img.shape), 0, 255).astype(np.uint8)


def prompts(h: int, w: int) -> dict[str, dict]:
    box = np.array([0.2 * w, 0.3 * h, 0.7 * w, 0.8 * h])
    return {
        "point": dict(point_coords=np.array([[0.5 * w, 0.5 * h]]), point_labels=np.array([1])),
        "points_with_negatives": dict(
            point_coords=np.array(
                [[0.5 * w, 0.5 * h], [0.3 * w, 0.6 * h], [0.1 * w, 0.1 * h], [0.9 * w, 0.7 * h]]
            ),
            point_labels=np.array([1, 1, 0, 0]),
        ),
        "box": dict(box=box),
        "box_and_point": dict(
            box=box, point_coords=np.array([[0.6 * w, 0.4 * h]]), point_labels=np.array([0])
        ),
    }


def compare(ours: SamPredictor, ref, image: np.ndarray) -> list[float]:
    """Assert agreement for every prompt and both mask modes; returns the masks' area fractions."""
    ours.set_image(image)
    ref.set_image(image)
    h, w = image.shape[:2]
    fractions = []
    for name, prompt in prompts(h, w).items():
        for multimask in (True, False):
            m_ref, s_ref, lr_ref = ref.predict(**prompt, multimask_output=multimask)
            pred = ours.predict(**prompt, multimask_output=multimask)
            assert pred.masks.shape == m_ref.shape == (3 if multimask else 1, h, w), name
            assert pred.masks.dtype == bool
            for i, (a, b) in enumerate(zip(pred.masks, m_ref, strict=True)):
                union = np.logical_or(a, b).sum()
                iou = 1.0 if union == 0 else np.logical_and(a, b).sum() / union
                assert iou >= 0.99, f"{name} multimask={multimask} mask {i}: IoU {iou:.4f}"
                fractions.append(float(b.mean()))
            scale = max(1.0, float(np.abs(lr_ref).max()))
            np.testing.assert_allclose(pred.low_res_logits, lr_ref, atol=1e-3 * scale, err_msg=name)
            np.testing.assert_allclose(pred.scores, s_ref, atol=1e-4, err_msg=name)
    return fractions


def assert_non_trivial(fractions: list[float]) -> None:
    # Masks that are (nearly) empty or full would agree whatever the transforms did.
    informative = [f for f in fractions if 0.01 < f < 0.99]
    assert len(informative) >= 0.8 * len(fractions), fractions


@pytest.mark.parametrize("name", REAL_IMAGES)
def test_matches_segment_anything_on_real_images(
    sam_pair, reference, assets: Path, name: str
) -> None:
    image = np.asarray(Image.open(assets / "coco-val-11" / "images" / name).convert("RGB"))
    assert_non_trivial(compare(sam_pair[1], reference, image))


@pytest.mark.parametrize("shape", [(300, 300), (120, 400), (400, 90), (37, 91), (1000, 700)])
def test_matches_segment_anything_on_synthetic_images(sam_pair, reference, shape) -> None:
    assert_non_trivial(compare(sam_pair[1], reference, synthetic_image(*shape)))


def test_mask_input_refinement_matches(sam_pair, reference) -> None:
    ours, ref = sam_pair[1], reference
    image = synthetic_image(240, 320, seed=3)
    ours.set_image(image)
    ref.set_image(image)
    point = dict(point_coords=np.array([[100.0, 120.0]]), point_labels=np.array([1]))
    first = ours.predict(**point)
    best = first.low_res_logits[int(np.argmax(first.scores))][None]
    assert best.shape == (1, 64, 64)
    pred = ours.predict(**point, mask_input=best, multimask_output=False)
    m_ref, s_ref, lr_ref = ref.predict(**point, mask_input=best, multimask_output=False)
    np.testing.assert_allclose(
        pred.low_res_logits, lr_ref, atol=1e-3 * max(1, np.abs(lr_ref).max())
    )
    assert np.logical_and(pred.masks, m_ref).sum() / np.logical_or(pred.masks, m_ref).sum() >= 0.99


def test_comparison_detects_a_wrong_coordinate_transform(sam_pair, reference) -> None:
    # The same check as above must fail when detseg's prompts are off (x and y swapped).
    ours, ref = sam_pair[1], reference
    image = synthetic_image(200, 360, seed=4)
    ours.set_image(image)
    ref.set_image(image)
    pred = ours.predict(point_coords=np.array([[60.0, 150.0]]), point_labels=np.array([1]))
    m_ref, _, lr_ref = ref.predict(
        point_coords=np.array([[150.0, 60.0]]), point_labels=np.array([1])
    )
    ious = [
        np.logical_and(a, b).sum() / max(1, np.logical_or(a, b).sum())
        for a, b in zip(pred.masks, m_ref, strict=True)
    ]
    assert min(ious) < 0.99
    assert np.abs(pred.low_res_logits - lr_ref).max() > 1e-2


def test_numpy_transforms_match_segment_anything() -> None:
    from segment_anything.utils.transforms import ResizeLongestSide

    rls = ResizeLongestSide(256)
    for h, w in [(426, 640), (640, 586), (37, 91), (256, 256), (1000, 3)]:
        image = synthetic_image(h, w)
        assert preprocess_shape(h, w, 256) == rls.get_preprocess_shape(h, w, 256)
        assert np.array_equal(resize_longest_side(image, 256), rls.apply_image(image))
        coords = np.array([[0.0, 0.0], [w - 1.0, h - 1.0], [w / 3, h / 7]])
        np.testing.assert_array_equal(
            transform_coords(coords, (h, w), 256), rls.apply_coords(coords, (h, w))
        )


def test_predict_before_set_image_says_what_to_do(sam_pair) -> None:
    _, ours = sam_pair
    fresh = SamPredictor(ours._encoder, ours._decoder)
    with pytest.raises(RuntimeError, match=r"set_image"):
        fresh.predict(point_coords=np.array([[1.0, 1.0]]), point_labels=np.array([1]))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "point_coords .* or box"),
        (
            {"point_coords": np.array([1.0, 2.0]), "point_labels": np.array([1])},
            r"point_coords must have shape \(K, 2\).*\(2,\)",
        ),
        (
            {"point_coords": np.zeros((2, 2)), "point_labels": np.array([1])},
            r"point_labels must have shape \(2,\).*\(1,\)",
        ),
        (
            {"point_coords": np.zeros((1, 2)), "point_labels": np.array([2])},
            "1 \\(positive\\) or 0",
        ),
        ({"point_coords": np.zeros((1, 2))}, "without point_labels"),
        ({"point_labels": np.array([1]), "box": np.zeros(4)}, "without point_coords"),
        ({"box": np.zeros((2, 2))}, r"box must have shape \(4,\).*\(2, 2\)"),
        ({"box": np.array([0, 0, np.nan, 5])}, "box has NaN"),
        (
            {"box": np.zeros(4), "mask_input": np.zeros((1, 256, 256))},
            r"mask_input must have shape \(1, 64, 64\).*\(1, 256, 256\)",
        ),
    ],
)
def test_bad_prompts_name_the_argument(sam_pair, kwargs, match) -> None:
    _, ours = sam_pair
    ours.set_image(synthetic_image(50, 60))
    with pytest.raises(InputError, match=match):
        ours.predict(**kwargs)


@pytest.mark.parametrize(
    "image, match",
    [
        (np.zeros((20, 30), np.uint8), r"\(H, W, 3\).*\(20, 30\)"),
        (np.zeros((20, 30, 4), np.uint8), r"\(20, 30, 4\)"),
        (np.zeros((20, 30, 3), np.float32), "uint8"),
        (np.zeros((0, 30, 3), np.uint8), r"\(0, 30, 3\)"),
    ],
)
def test_bad_images_are_refused(sam_pair, image, match) -> None:
    with pytest.raises(InputError, match=match):
        sam_pair[1].set_image(image)


class CountingSession:
    def __init__(self, session) -> None:
        self.session, self.calls = session, 0
        self.metadata = session.metadata

    def run(self, feeds):
        self.calls += 1
        return self.session.run(feeds)


def test_embeddings_are_cached_per_image_in_a_bounded_lru(sam_pair) -> None:
    _, ours = sam_pair
    encoder = CountingSession(ours._encoder)
    predictor = SamPredictor(encoder, ours._decoder, cache_size=2)
    a, b, c = (synthetic_image(64, 80, seed=s) for s in (10, 11, 12))
    predictor.set_image(a)
    predictor.set_image(b)
    predictor.set_image(a.copy())  # same content, another array: cached
    assert encoder.calls == 2
    predictor.set_image(c)  # evicts b (least recently used)
    predictor.set_image(a)
    assert encoder.calls == 3
    predictor.set_image(b)
    assert encoder.calls == 4
    # same bytes, other shape: not the same image
    predictor.set_image(np.ascontiguousarray(a.reshape(80, 64, 3)))
    assert encoder.calls == 5


def test_predict_with_a_kept_embedding_ignores_the_current_image(sam_pair) -> None:
    _, ours = sam_pair
    a, b = synthetic_image(90, 120, seed=20), synthetic_image(140, 100, seed=21)
    emb_a = ours.embed(a)
    assert emb_a.original_size == (90, 120)
    ours.set_image(b)
    box = np.array([10, 10, 80, 60])
    kept = ours.predict(box=box, embedding=emb_a)
    ours.set_image(a)
    current = ours.predict(box=box)
    assert kept.masks.shape == (3, 90, 120)
    np.testing.assert_array_equal(kept.low_res_logits, current.low_res_logits)


def test_prediction_shapes_and_types(sam_pair) -> None:
    _, ours = sam_pair
    ours.set_image(synthetic_image(77, 133))
    pred = ours.predict(box=np.array([10, 10, 60, 50]))
    assert isinstance(pred, SamPrediction)
    assert pred.masks.shape == (3, 77, 133) and pred.masks.dtype == bool
    assert pred.scores.shape == (3,) and pred.scores.dtype == np.float32
    assert pred.low_res_logits.shape == (3, 64, 64)
    assert ours.image_embedding.shape == (1, 256, 16, 16)
    assert ours.providers == ["CPUExecutionProvider"]
    assert ours.arch["image_size"] == 256


def test_load_refuses_swapped_or_missing_files(sam_pair, tmp_path) -> None:
    enc = sam_pair[1]._encoder.path
    dec = sam_pair[1]._decoder.path
    with pytest.raises(ModelError, match="detseg_task should be 'sam_encoder'"):
        SamPredictor.load(dec, enc, device="cpu")
    with pytest.raises(InputError, match="not found"):
        SamPredictor.load(tmp_path / "nope.onnx", dec, device="cpu")


def test_module_imports_without_torch() -> None:
    code = (
        "import sys, detseg.pipeline.sam\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'segment_anything', 'torchvision')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
