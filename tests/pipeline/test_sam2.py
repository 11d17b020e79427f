"""SAM 2 runtime pieces against sam2 / torch on the same inputs (no export needed).

The end-to-end parity of the exported ONNX against `SAM2ImagePredictor` is in
tests/weights/test_export_sam2.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from detseg.errors import InputError, ModelError
from detseg.pipeline.sam import SamEmbedding, SamPredictor
from detseg.pipeline.sam2 import (
    Sam2Embedding,
    Sam2Predictor,
    resize_square,
    sam2_prompt_arrays,
    stability_scores,
    upsample_logits,
)

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("hw", [(240, 360), (1500, 1100), (700, 2000), (50, 80), (1024, 1024)])
def test_resize_square_matches_sam2_transforms(hw) -> None:
    pytest.importorskip("sam2")
    from sam2.utils.transforms import SAM2Transforms

    image = np.random.default_rng(sum(hw)).integers(0, 256, (*hw, 3), dtype=np.uint8)
    ref = SAM2Transforms(1024, 0.0)(image).permute(1, 2, 0).numpy()
    mean, std = np.float32([0.485, 0.456, 0.406]), np.float32([0.229, 0.224, 0.225])
    ours = (resize_square(image, 1024) - mean) / std
    assert ours.shape == (1024, 1024, 3) and ours.dtype == np.float32
    assert np.abs(ours - ref).max() < 1e-4
    # A wrong filter (no antialias when shrinking) is far off: the check can fail.
    if max(hw) > 1024:
        plain = torch.nn.functional.interpolate(
            torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255, (1024, 1024),
            mode="bilinear", antialias=False)[0].permute(1, 2, 0).numpy()
        assert np.abs((plain - mean) / std - ref).max() > 0.05


@pytest.mark.parametrize("hw", [(240, 360), (37, 1000), (1080, 1920), (256, 256), (100, 50)])
def test_upsample_logits_matches_torch_interpolate(hw) -> None:
    logits = np.random.default_rng(0).normal(0, 8, (3, 256, 256)).astype(np.float32)
    ref = torch.nn.functional.interpolate(torch.from_numpy(logits)[None], hw, mode="bilinear",
                                          align_corners=False)[0].numpy()
    ours = upsample_logits(logits, hw)
    assert ours.shape == (3, *hw)
    assert np.abs(ours - ref).max() <= 1e-5 * np.abs(ref).max()  # float32 rounding only
    assert ((ours > 0) != (ref > 0)).mean() < 1e-4


def test_stability_scores_match_sam2_mask_decoder() -> None:
    pytest.importorskip("sam2")
    from sam2.modeling.sam.mask_decoder import MaskDecoder

    logits = np.random.default_rng(1).normal(0, 0.2, (5, 64, 64)).astype(np.float32)
    logits[0] = 10.0  # fully stable
    decoder = MaskDecoder.__new__(MaskDecoder)
    decoder.dynamic_multimask_stability_delta = 0.05
    ref = MaskDecoder._get_stability_scores(decoder, torch.from_numpy(logits)).numpy()
    assert np.allclose(stability_scores(logits, 0.05), ref)
    assert stability_scores(logits, 0.05)[0] == 1.0


def test_prompt_arrays_follow_sam2_order_and_scaling() -> None:
    coords, labels = sam2_prompt_arrays(
        np.array([[30.0, 20.0]]), np.array([0]), np.array([10.0, 20.0, 50.0, 80.0]), (100, 200), 1024
    )
    # box corners first, then the point, then one padding point
    assert labels.tolist() == [[2.0, 3.0, 0.0, -1.0]]
    expected = np.array([[10 / 200, 20 / 100], [50 / 200, 80 / 100], [30 / 200, 20 / 100],
                         [0, 0]]) * [1024, 1024]
    assert np.allclose(coords[0], expected)
    assert coords.dtype == labels.dtype == np.float32
    coords, labels = sam2_prompt_arrays(np.array([[1.0, 2.0]]), np.array([1]), None, (10, 10), 1024)
    assert labels.tolist() == [[1.0, -1.0]] and coords.shape == (1, 2, 2)


class FakeSession:
    """Stands in for an onnxruntime session: fixed outputs, records feeds."""

    def __init__(self, metadata: dict[str, str], outputs: list[np.ndarray]) -> None:
        self.metadata = metadata
        self.outputs = outputs
        self.feeds: list[dict[str, np.ndarray]] = []

    def run(self, feeds):
        self.feeds.append(feeds)
        return self.outputs


META = {"sam_generation": "2", "image_size": "64", "low_res_size": "16",
        "mask_threshold": "0.0", "dynamic_multimask_via_stability": "True",
        "dynamic_multimask_stability_delta": "0.05", "dynamic_multimask_stability_thresh": "0.98"}


def _predictor(single_token_logit: float) -> tuple[Sam2Predictor, FakeSession]:
    low = np.zeros((1, 4, 16, 16), np.float32)
    low[0, 0] = single_token_logit  # 0.0 -> unstable (stability 0), 5.0 -> stable
    low[0, 1:, :, :8] = 40.0  # left halves positive, beyond the +-32 clamp
    low[0, 1:, :, 8:] = -40.0
    iou = np.array([[0.5, 0.2, 0.9, 0.1]], np.float32)
    enc = FakeSession(META, [np.zeros((1, 8, 4, 4), np.float32), np.zeros((1, 1, 16, 16), np.float32),
                             np.zeros((1, 2, 8, 8), np.float32)])
    dec = FakeSession(META, [iou, low, np.zeros((1, 1), np.float32)])
    return Sam2Predictor(enc, dec), dec


@pytest.mark.parametrize(("logit", "expected_score"), [(5.0, 0.5), (0.0, 0.9)])
def test_single_mask_falls_back_to_best_multimask_when_unstable(logit, expected_score) -> None:
    sam, dec = _predictor(logit)
    image = np.zeros((30, 40, 3), np.uint8)
    sam.set_image(image)
    pred = sam.predict(point_coords=[[5, 5]], point_labels=[1], multimask_output=False)
    assert pred.scores.tolist() == [pytest.approx(expected_score)]
    assert pred.masks.shape == (1, 30, 40)
    multi = sam.predict(point_coords=[[5, 5]], point_labels=[1])
    assert multi.scores.shape == (3,) and multi.masks.shape == (3, 30, 40)
    assert multi.low_res_logits.max() == 32.0 and multi.low_res_logits.min() == -32.0
    assert multi.masks[:, :, :20].all() and not multi.masks[:, :, 20:].any()
    feeds = dec.feeds[-1]
    assert feeds["point_labels"].tolist() == [[1.0, -1.0]]
    assert feeds["has_mask_input"].tolist() == [0.0]
    assert feeds["high_res_feats_0"].shape == (1, 1, 16, 16)


def test_embedding_carries_high_res_features_and_is_cached() -> None:
    sam, _ = _predictor(5.0)
    image = np.full((20, 10, 3), 7, np.uint8)
    emb = sam.embed(image)
    assert isinstance(emb, Sam2Embedding) and emb.original_size == (20, 10)
    assert [f.shape for f in emb.high_res_features] == [(1, 1, 16, 16), (1, 2, 8, 8)]
    assert sam.embed(image.copy()) is emb
    assert sam._encoder.feeds[0]["image"].shape == (64, 64, 3)
    assert sam._encoder.feeds[0]["image"].dtype == np.float32
    with pytest.raises(ModelError, match="SAM 1 encoder"):
        sam.predict(point_coords=[[1, 1]], point_labels=[1],
                    embedding=SamEmbedding(emb.features, (20, 10)))
    with pytest.raises(InputError, match="point_labels"):
        sam.predict(point_coords=[[1, 1]], point_labels=[3], embedding=emb)
    with pytest.raises(RuntimeError, match="set_image"):
        sam.predict(point_coords=[[1, 1]], point_labels=[1])


def test_generations_are_not_mixed_up() -> None:
    enc = FakeSession(META, [])
    with pytest.raises(ModelError, match="SAM 2 export"):
        SamPredictor(enc, FakeSession(META, []))
    sam1_meta = {"image_size": "64"}
    with pytest.raises(ModelError, match="sam_generation"):
        Sam2Predictor(FakeSession(sam1_meta, []), FakeSession(sam1_meta, []))
