"""SAM architectures: small models from segment-anything's modules, official ones, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
segment_anything = pytest.importorskip("segment_anything")

from detseg.errors import InputError, ModelError  # noqa: E402
from detseg.weights.sam_arch import (  # noqa: E402
    OFFICIAL_ARCHS,
    SamArch,
    arch_of,
    build_sam_official,
    build_sam_small,
    load_sam,
    read_sam_checkpoint,
    save_sam_checkpoint,
)


@pytest.mark.parametrize("image_size", [256, 512])
def test_small_sam_runs_end_to_end_at_its_image_size(image_size: int) -> None:
    torch.manual_seed(0)
    sam = build_sam_small(image_size=image_size)
    predictor = segment_anything.SamPredictor(sam)
    image = np.random.default_rng(0).integers(0, 256, (120, 200, 3), dtype=np.uint8)
    predictor.set_image(image)
    emb = image_size // 16
    assert tuple(predictor.features.shape) == (1, 256, emb, emb)
    masks, scores, low_res = predictor.predict(np.array([[50.0, 40.0]]), np.array([1]))
    assert masks.shape == (3, 120, 200) and scores.shape == (3,)
    assert low_res.shape == (3, 4 * emb, 4 * emb)
    # low-res logits go back in as a mask prompt of the same size
    masks2, _, _ = predictor.predict(
        np.array([[50.0, 40.0]]), np.array([1]), mask_input=low_res[:1], multimask_output=False
    )
    assert masks2.shape == (1, 120, 200)


@pytest.mark.parametrize("model_type", ["vit_b", "vit_l", "vit_h"])
def test_official_arch_matches_segment_anything_builder(model_type: str) -> None:
    # Compare parameter names and shapes without allocating vit_h: build on the meta device.
    with torch.device("meta"):
        ours = build_sam_official(model_type)
        ref = segment_anything.sam_model_registry[model_type]()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in ref.state_dict().items()
    }
    assert arch_of(ref) == OFFICIAL_ARCHS[model_type]


def test_arch_of_reads_small_model_sizes_off_modules() -> None:
    sam = build_sam_small(
        image_size=512,
        encoder_embed_dim=64,
        depth=3,
        num_heads=4,
        global_attn_indexes=(0, 2),
        decoder_mlp_dim=256,
        prompt_embed_dim=128,
        iou_head_hidden_dim=64,
        window_size=7,
    )
    stored = sam.detseg_arch
    del sam.detseg_arch
    assert arch_of(sam) == stored
    assert stored.embedding_size == 32 and stored.low_res_size == 128


def test_arch_dict_round_trip_and_unknown_field() -> None:
    arch = SamArch(image_size=256, encoder_global_attn_indexes=(1, 3, 5, 7))
    assert SamArch.from_dict(arch.to_dict()) == arch
    with pytest.raises(InputError, match="unknown field"):
        SamArch.from_dict({"image_sise": 256})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"image_size": 250}, "multiple of 16"),
        ({"encoder_embed_dim": 100, "encoder_num_heads": 3}, "encoder_num_heads"),
        ({"encoder_depth": 2, "encoder_global_attn_indexes": (5,)}, r"\[0, 2\)"),
        ({"prompt_embed_dim": 100}, "prompt_embed_dim"),
    ],
)
def test_bad_arch_is_rejected(kwargs: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        SamArch(**kwargs)


def test_checkpoint_round_trip_carries_arch(tmp_path) -> None:
    torch.manual_seed(1)
    sam = build_sam_small(image_size=256)
    path = save_sam_checkpoint(sam, tmp_path / "small.pt")
    state, arch = read_sam_checkpoint(path)
    assert arch == arch_of(sam)
    loaded = load_sam(path)
    for k, v in sam.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    # a bare state dict (the official format) needs a model type
    torch.save(sam.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(InputError, match="model_type"):
        load_sam(tmp_path / "bare.pt")
    with pytest.raises(ModelError, match="do not fit"):
        load_sam(tmp_path / "bare.pt", model_type="vit_b")


def test_checkpoint_that_needs_code_is_refused(tmp_path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "x": Evil()}, path)
    with pytest.raises(ModelError, match="weights_only"):
        read_sam_checkpoint(path)


def test_missing_checkpoint() -> None:
    with pytest.raises(InputError, match="not found"):
        read_sam_checkpoint("/nonexistent/sam.pth")
