"""Segment Anything architectures: the official ViT-B/L/H and small ones built from the same modules.

Every model is a `segment_anything.modeling.Sam` assembled from segment-anything's own
`ImageEncoderViT`, `PromptEncoder`, `MaskDecoder` and `TwoWayTransformer`; only the sizes change.
A `SamArch` records those sizes so that export can embed them in the ONNX metadata and a
checkpoint can carry them (see `save_sam_checkpoint`).

Sizes that follow from `image_size` (SAM's own conventions, kept for every size):
- the encoder sees a square `image_size` x `image_size` input (image resized so that its
  longest side is `image_size`, then padded bottom/right);
- the image embedding is `(prompt_embed_dim, image_size / 16, image_size / 16)`;
- the decoder's low-resolution mask logits (and the optional mask prompt) are
  `image_size / 4` square: 256 for the official 1024 models, 64 for a 256 model.

Checkpoints are read with `torch.load(..., weights_only=True)`: a checkpoint cannot run code.
This module imports torch; keep it out of the runtime (onnxruntime-only) path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

from detseg.errors import InputError, ModelError

PATCH_SIZE = 16
ARCH_KEY = "detseg_sam_arch"  # key of the architecture dict inside a detseg SAM checkpoint


@dataclass(frozen=True)
class SamArch:
    """The sizes of one SAM model (every field is a plain int/float/tuple, JSON-friendly)."""

    image_size: int = 1024
    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    encoder_global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    window_size: int = 14
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    mask_threshold: float = field(default=0.0)

    def __post_init__(self) -> None:
        if self.image_size <= 0 or self.image_size % PATCH_SIZE:
            raise InputError(
                f"SamArch.image_size: expected a positive multiple of {PATCH_SIZE}, "
                f"found {self.image_size}"
            )
        if self.encoder_embed_dim % self.encoder_num_heads:
            raise InputError(
                f"SamArch.encoder_embed_dim: expected a multiple of encoder_num_heads "
                f"({self.encoder_num_heads}), found {self.encoder_embed_dim}"
            )
        bad = [i for i in self.encoder_global_attn_indexes if not 0 <= i < self.encoder_depth]
        if bad:
            raise InputError(
                f"SamArch.encoder_global_attn_indexes: expected block indexes in "
                f"[0, {self.encoder_depth}), found {list(bad)}"
            )
        if self.prompt_embed_dim % 8 or (self.prompt_embed_dim // 2) % self.decoder_num_heads:
            raise InputError(
                f"SamArch.prompt_embed_dim: expected a multiple of 8 whose half is a multiple "
                f"of decoder_num_heads ({self.decoder_num_heads}), found {self.prompt_embed_dim}"
            )

    @property
    def embedding_size(self) -> int:
        """Side of the square image embedding: image_size / 16."""
        return self.image_size // PATCH_SIZE

    @property
    def low_res_size(self) -> int:
        """Side of the low-resolution mask logits and of the mask prompt: image_size / 4."""
        return 4 * self.embedding_size

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists for tuples), for JSON metadata and checkpoints."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SamArch:
        """Inverse of `to_dict`; unknown keys are an error so that typos do not go unnoticed."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InputError(
                f"SAM architecture: unknown field(s) {unknown}; expected some of {sorted(names)}"
            )
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**kwargs)


OFFICIAL_ARCHS: dict[str, SamArch] = {
    "vit_b": SamArch(),
    "vit_l": SamArch(
        encoder_embed_dim=1024,
        encoder_depth=24,
        encoder_num_heads=16,
        encoder_global_attn_indexes=(5, 11, 17, 23),
    ),
    "vit_h": SamArch(
        encoder_embed_dim=1280,
        encoder_depth=32,
        encoder_num_heads=16,
        encoder_global_attn_indexes=(7, 15, 23, 31),
    ),
}
OFFICIAL_ARCHS["default"] = OFFICIAL_ARCHS["vit_h"]


def build_sam_from_arch(arch: SamArch, checkpoint: str | Path | None = None) -> Sam:
    """A `Sam` in eval mode with `arch`'s sizes; weights from `checkpoint` or PyTorch's default init.

    Mirrors `segment_anything.build_sam._build_sam` module by module (same classes, same
    arguments), so that an official checkpoint loads into `OFFICIAL_ARCHS[...]` unchanged.
    The architecture is kept on the model as `model.detseg_arch` (see `arch_of`).
    """
    emb = arch.embedding_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=arch.encoder_depth,
            embed_dim=arch.encoder_embed_dim,
            img_size=arch.image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=arch.encoder_num_heads,
            patch_size=PATCH_SIZE,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=tuple(arch.encoder_global_attn_indexes),
            window_size=arch.window_size,
            out_chans=arch.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=arch.prompt_embed_dim,
            image_embedding_size=(emb, emb),
            input_image_size=(arch.image_size, arch.image_size),
            mask_in_chans=arch.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=arch.decoder_depth,
                embedding_dim=arch.prompt_embed_dim,
                mlp_dim=arch.decoder_mlp_dim,
                num_heads=arch.decoder_num_heads,
            ),
            transformer_dim=arch.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=arch.iou_head_hidden_dim,
        ),
        pixel_mean=list(arch.pixel_mean),
        pixel_std=list(arch.pixel_std),
    )
    sam.mask_threshold = arch.mask_threshold
    sam.eval()
    if checkpoint is not None:
        state, _ = read_sam_checkpoint(checkpoint)
        _load_state(sam, state, checkpoint)
    sam.detseg_arch = arch
    return sam


def build_sam_small(
    image_size: int = 256,
    encoder_embed_dim: int = 96,
    depth: int = 2,
    num_heads: int = 2,
    global_attn_indexes: tuple[int, ...] = (1,),
    checkpoint: str | Path | None = None,
    **sizes: Any,
) -> Sam:
    """A small SAM from segment-anything's modules (default: 256 px input, 2-block ViT).

    `sizes` may set any other `SamArch` field (window_size, prompt_embed_dim, decoder_mlp_dim,
    decoder_num_heads, iou_head_hidden_dim, mask_in_chans, ...); unset ones keep SAM's values.
    """
    arch = SamArch(
        image_size=image_size,
        encoder_embed_dim=encoder_embed_dim,
        encoder_depth=depth,
        encoder_num_heads=num_heads,
        encoder_global_attn_indexes=tuple(global_attn_indexes),
        **sizes,
    )
    return build_sam_from_arch(arch, checkpoint)


def build_sam_official(model_type: str, checkpoint: str | Path | None = None) -> Sam:
    """An official SAM (`vit_b`, `vit_l`, `vit_h`/`default`), its weights read with weights_only.

    Equivalent to `segment_anything.sam_model_registry[model_type](checkpoint)` except that the
    checkpoint is never unpickled as code. Without a checkpoint the weights are random.
    """
    if model_type not in OFFICIAL_ARCHS:
        raise InputError(
            f"SAM model_type: expected one of {sorted(OFFICIAL_ARCHS)}, found {model_type!r}"
        )
    return build_sam_from_arch(OFFICIAL_ARCHS[model_type], checkpoint)


def load_sam(checkpoint: str | Path, model_type: str | None = None) -> Sam:
    """A SAM from a checkpoint: its own stored architecture if it has one, else `model_type`.

    A detseg checkpoint (written by `save_sam_checkpoint`) carries its `SamArch`; an official
    `sam_vit_*.pth` is a bare state dict and needs `model_type`.
    """
    state, arch = read_sam_checkpoint(checkpoint)
    if arch is None:
        if model_type is None:
            raise InputError(
                f"{checkpoint}: the checkpoint holds no architecture; pass model_type "
                f"(one of {sorted(OFFICIAL_ARCHS)})"
            )
        if model_type not in OFFICIAL_ARCHS:
            raise InputError(
                f"SAM model_type: expected one of {sorted(OFFICIAL_ARCHS)}, found {model_type!r}"
            )
        arch = OFFICIAL_ARCHS[model_type]
    sam = build_sam_from_arch(arch)
    _load_state(sam, state, checkpoint)
    return sam


def save_sam_checkpoint(model: Sam, path: str | Path) -> Path:
    """Write `{"state_dict": ..., "detseg_sam_arch": {...}}`, loadable with weights_only=True."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"state_dict": model.state_dict(), ARCH_KEY: arch_of(model).to_dict()}, tmp)
    tmp.replace(path)
    return path


def read_sam_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], SamArch | None]:
    """(state dict, stored architecture or None) of a SAM checkpoint, never running its code.

    Accepts a bare state dict (the official files), `{"state_dict": ...}` or `{"model": ...}`.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: SAM checkpoint not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors come in many types; report them as one
        raise ModelError(
            f"{path}: not a loadable PyTorch checkpoint with weights_only=True ({exc})"
        ) from exc
    if not isinstance(obj, dict):
        raise ModelError(f"{path}: expected a dict (a state dict), found {type(obj).__name__}")
    arch = SamArch.from_dict(obj[ARCH_KEY]) if ARCH_KEY in obj else None
    for key in ("state_dict", "model"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    return obj, arch


def arch_of(model: Sam) -> SamArch:
    """The `SamArch` of a model: the one it was built with, or read off its modules."""
    arch = getattr(model, "detseg_arch", None)
    if isinstance(arch, SamArch):
        return arch
    enc, pe, dec = model.image_encoder, model.prompt_encoder, model.mask_decoder
    blocks = list(enc.blocks)
    windows = {b.window_size for b in blocks if b.window_size > 0}
    layers = list(dec.transformer.layers)
    return SamArch(
        image_size=enc.img_size,
        encoder_embed_dim=enc.patch_embed.proj.out_channels,
        encoder_depth=len(blocks),
        encoder_num_heads=blocks[0].attn.num_heads,
        encoder_global_attn_indexes=tuple(i for i, b in enumerate(blocks) if b.window_size == 0),
        window_size=windows.pop() if windows else 14,
        prompt_embed_dim=pe.embed_dim,
        mask_in_chans=pe.mask_downscaling[3].out_channels,
        decoder_depth=len(layers),
        decoder_mlp_dim=layers[0].mlp.lin1.out_features,
        decoder_num_heads=layers[0].self_attn.num_heads,
        iou_head_hidden_dim=dec.iou_prediction_head.layers[0].out_features,
        pixel_mean=_float32_values(model.pixel_mean),
        pixel_std=_float32_values(model.pixel_std),
        mask_threshold=float(model.mask_threshold),
    )


def _load_state(sam: Sam, state: Mapping[str, torch.Tensor], path: str | Path) -> None:
    try:
        sam.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(
            f"{path}: weights do not fit the SAM architecture {arch_of(sam).to_dict()}: {exc}"
        ) from exc


def _float32_values(t: torch.Tensor) -> tuple[float, ...]:
    # Shortest decimal that round-trips through float32: 123.675, not 123.67500305175781.
    return tuple(float(f"{float(v):.7g}") for v in t.flatten())
