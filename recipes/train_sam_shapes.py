"""Recipe: the built-in promptable segmenter, a small Segment Anything trained on shapes.

The shipped ``detseg/weights/builtin/sam_shapes_{encoder,decoder}.onnx`` came from exactly
these commands on one NVIDIA H200 (torch 2.11; see the model card ``sam_shapes.md``), each
run while ``recipes/train_yolo_shapes.py`` shared the GPU::

    # stage 1 (from scratch; this run had the loss bug described below)
    python recipes/train_sam_shapes.py --root /tmp/shapes --device cuda \\
        --minutes 4.5 --batch 48 --prompts 4 --out /tmp/sam_stage1.pt
    # stage 2 (continued, loss fixed)
    python recipes/train_sam_shapes.py --init /tmp/sam_stage1.pt --root /tmp/shapes \\
        --device cuda --minutes 5.0 --batch 128 --prompts 4 --lr 4e-4 --out /tmp/sam_shapes.pt
    python -c "from pathlib import Path; from detseg.weights.export_sam import export_sam; \\
        export_sam(Path('/tmp/sam_shapes.pt'), 'sam_small_shapes', Path('OUT'))"

Stage 1 ran with a bug since fixed here: each prompt group's *summed* segmentation loss
was added to every sample's IoU-prediction loss, which scaled the segmentation term by the
group size (~100) and left the IoU-prediction term negligible in the shared layers. Stage
2 trained with the loss as written below. (Stage 1 read generator-v1 polygons with
``cv2.fillPoly``, which gives the same visible-pixel masks that ``polygons_to_mask`` gives
for v2 polygons.)

- data: the same ``detseg data shapes`` splits as the detector, 4,000 training images
  (``recipes/train_yolo_shapes.py --prepare-only`` makes them): train seed 1; the scores printed at the end come from
  ``--eval-root`` (default ``ROOT/test``, seed 3, generated here if missing), never trained on;
- model: ``detseg.weights.sam_arch.build_sam_small`` (segment-anything's own modules):
  256 px input, ViT of ``--dim`` 192 x ``--depth`` 6 blocks (global attention in blocks 2
  and 5, window 8), prompt/decoder width 128, decoder MLP 512; random init;
- prompts, sampled per instance from its ground-truth visible mask: one positive click
  at a uniformly random mask pixel (multimask output, loss on the best of the 3 masks as in
  SAM), the box (xyxy, jittered by up to ~8 % of its side; single-mask output), or box plus
  click (single-mask output);
- loss: 20 x focal + dice on the logits upsampled to 256 px, plus MSE between the IoU head
  and the real IoU of each output mask; AdamW (lr ``--lr``, wd 0.05), 200 warm-up steps,
  cosine decay to the ``--minutes`` budget, bf16 autocast on CUDA, random dihedral flips.

Evaluation (printed, and written beside the checkpoint as JSON): mean mask IoU at the
image's own 320 px resolution on every annotated instance of the eval split, for (a) one
click at the mask pixel farthest from its border, output = the multimask output with the
highest predicted IoU (SamPredictor's usual single-click use), and (b) the exact GT box,
single-mask output.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detseg.data.shapes import polygons_to_mask  # noqa: E402
from detseg.weights.sam_arch import build_sam_small, save_sam_checkpoint  # noqa: E402

EVAL_SEED = 3


# ----------------------------------------------------------------------------- data


def load_split(root: Path, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read a shapes split resized to ``size`` (square images only).

    Returns images (N, size, size, 3) uint8 RGB, label maps (N, size, size) uint8 (0
    background, k = k-th annotation of that image), and counts (N,) instances per image.
    """
    data = json.loads((root / "instances.json").read_text())
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    n = len(data["images"])
    images = np.zeros((n, size, size, 3), np.uint8)
    labels = np.zeros((n, size, size), np.uint8)
    counts = np.zeros(n, np.int64)
    for i, im in enumerate(data["images"]):
        bgr = cv2.imread(str(root / "images" / im["file_name"]))
        images[i] = cv2.resize(bgr, (size, size), interpolation=cv2.INTER_LINEAR)[..., ::-1]
        lab = np.zeros((im["height"], im["width"]), np.uint8)
        anns = by_image.get(im["id"], [])
        for k, ann in enumerate(anns, start=1):
            lab[polygons_to_mask(ann["segmentation"], im["height"], im["width"])] = k
        labels[i] = cv2.resize(lab, (size, size), interpolation=cv2.INTER_NEAREST)
        counts[i] = len(anns)
    return images, labels, counts


def load_split_full(root: Path) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    """Images (H, W, 3) uint8 RGB at their own size and their instance masks (H, W) bool."""
    data = json.loads((root / "instances.json").read_text())
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    images, masks = [], []
    for im in data["images"]:
        images.append(cv2.imread(str(root / "images" / im["file_name"]))[..., ::-1].copy())
        ms = [polygons_to_mask(ann["segmentation"], im["height"], im["width"])
              for ann in by_image.get(im["id"], [])]
        masks.append(ms)
    return images, masks


# ----------------------------------------------------------------------------- model pieces


def decode(sam, emb: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor):
    """`MaskDecoder.predict_masks` for M prompts that each have their own image embedding.

    emb (M, C, h, w) image embeddings already gathered per prompt; sparse (M, T, C);
    dense (M, C, h, w). Returns low-res logits (M, 4, 4h, 4w) and IoU predictions (M, 4).
    Same modules and arithmetic as segment-anything's decoder, without its repeat_interleave
    (which assumes one image per call).
    """
    dec = sam.mask_decoder
    m = sparse.shape[0]
    out_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], 0)
    tokens = torch.cat([out_tokens.unsqueeze(0).expand(m, -1, -1), sparse], 1)
    src = emb + dense
    pos = sam.prompt_encoder.get_dense_pe().expand(m, -1, -1, -1)
    b, c, h, w = src.shape
    hs, src = dec.transformer(src, pos, tokens)
    iou_out, mask_out = hs[:, 0], hs[:, 1 : 1 + dec.num_mask_tokens]
    up = dec.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    hyper = torch.stack(
        [dec.output_hypernetworks_mlps[i](mask_out[:, i]) for i in range(dec.num_mask_tokens)], 1
    )
    b, c, h, w = up.shape
    masks = (hyper @ up.reshape(b, c, h * w)).reshape(b, -1, h, w)
    return masks, dec.iou_prediction_head(iou_out)


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(M, 4) xyxy boxes (x1, y1 exclusive) of non-empty masks (M, H, W) bool."""
    rows, cols = masks.any(2), masks.any(1)
    h, w = masks.shape[1:]
    y0 = rows.float().argmax(1)
    y1 = h - rows.flip(1).float().argmax(1)
    x0 = cols.float().argmax(1)
    x1 = w - cols.flip(1).float().argmax(1)
    return torch.stack([x0, y0, x1, y1], 1).float()


def sample_clicks(masks: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """(M, 2) xy pixel centres of one uniformly random pixel inside each mask (M, H, W)."""
    w = masks.shape[2]
    flat = masks.flatten(1).float() + 1e-12
    idx = torch.multinomial(flat, 1, generator=gen)[:, 0]
    return torch.stack([(idx % w).float(), (idx // w).float()], 1) + 0.5


def seg_loss(logits: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Per-sample 20 x sigmoid focal + dice. logits, gt: (M, H, W); returns (M,)."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, gt, reduction="none")
    pt = p * gt + (1 - p) * (1 - gt)
    alpha = 0.25 * gt + 0.75 * (1 - gt)
    focal = (alpha * ce * (1 - pt) ** 2).flatten(1).mean(1)
    inter = (p * gt).flatten(1).sum(1)
    dice = 1 - (2 * inter + 1) / (p.flatten(1).sum(1) + gt.flatten(1).sum(1) + 1)
    return 20 * focal + dice


def iou_of(logits: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """(M, K) IoU of logits (M, K, H, W) > 0 against gt (M, H, W)."""
    pred = logits > 0
    g = gt.bool()[:, None]
    inter = (pred & g).flatten(2).sum(2).float()
    union = (pred | g).flatten(2).sum(2).float()
    return inter / union.clamp(min=1)


# ----------------------------------------------------------------------------- training


def train_step(sam, images, labels, counts, args, gen, dev):
    """One optimisation step on a random batch; returns the loss tensor."""
    n, s = images.shape[0], args.image_size
    idx = torch.randint(0, n, (args.batch,), generator=gen, device=dev)
    img, lab, cnt = images[idx], labels[idx], counts[idx]
    flip = int(torch.randint(0, 8, (1,), generator=gen, device=dev))
    if flip & 1:
        img, lab = img.flip(2), lab.flip(2)
    if flip & 2:
        img, lab = img.flip(1), lab.flip(1)
    if flip & 4:
        img, lab = img.transpose(1, 2), lab.transpose(1, 2)
    x = sam.preprocess(img.permute(0, 3, 1, 2).float())
    emb = sam.image_encoder(x)
    p = args.prompts
    pick = (torch.rand(args.batch, p, generator=gen, device=dev) * cnt[:, None]).long() + 1
    keep = (cnt[:, None] > 0).expand(-1, p).reshape(-1)
    gt = (lab[:, None] == pick[:, :, None, None]).reshape(-1, s, s)[keep]
    emb = emb[:, None].expand(-1, p, -1, -1, -1).reshape(-1, *emb.shape[1:])[keep]
    m = gt.shape[0]
    mode = torch.randint(0, 10, (m,), generator=gen, device=dev)  # 0-4 click, 5-7 box, 8-9 both
    clicks = sample_clicks(gt, gen)
    boxes = mask_boxes(gt)
    side = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    jitter = (torch.rand(m, 4, generator=gen, device=dev) * 2 - 1) * 0.08 * side
    boxes = (boxes + jitter).clamp(0, s)
    gtf = gt.float()
    total = []
    pe = sam.prompt_encoder
    groups = (mode < 5, (mode >= 5) & (mode < 8), mode >= 8)
    for g, sel in enumerate(groups):
        if not bool(sel.any()):
            continue
        k = int(sel.sum())
        pts = (clicks[sel][:, None], torch.ones(k, 1, device=dev, dtype=torch.int64))
        if g == 0:
            sparse, dense = pe(points=pts, boxes=None, masks=None)
        elif g == 1:
            sparse, dense = pe(points=None, boxes=boxes[sel], masks=None)
        else:
            sparse, dense = pe(points=pts, boxes=boxes[sel], masks=None)
        low, iou_pred = decode(sam, emb[sel], sparse, dense.expand(k, -1, -1, -1))
        up = F.interpolate(low.float(), (s, s), mode="bilinear", align_corners=False)
        target = gtf[sel]
        if g == 0:
            per = torch.stack([seg_loss(up[:, j], target) for j in (1, 2, 3)], 1)
            seg = per.min(1).values
        else:
            seg = seg_loss(up[:, 0], target)
        iou_t = iou_of(up.detach(), target)
        total.append(seg + ((iou_pred.float() - iou_t) ** 2).sum(1))
    return torch.cat([t.reshape(-1) for t in total]).sum() / m


@torch.no_grad()
def evaluate(sam, root: Path, args, dev) -> dict:
    """Mean mask IoU over every instance of ``root`` for a centre click and for the GT box."""
    images, masks = load_split_full(root)
    s = args.image_size
    res = {"click": [], "click_mask0": [], "box": []}
    sam.eval()
    for img, ms in zip(images, masks, strict=True):
        if not ms:
            continue
        h, w = img.shape[:2]
        scale = s / max(h, w)
        nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
        x = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
        t = torch.from_numpy(x).to(dev).permute(2, 0, 1)[None].float()
        emb = sam.image_encoder(sam.preprocess(t))
        clicks, boxes = [], []
        for m in ms:
            dist = cv2.distanceTransform(np.pad(m, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
            yx = np.unravel_index(int(dist.argmax()), dist.shape)
            clicks.append([yx[1] * scale, yx[0] * scale])
            ys, xs = np.nonzero(m)
            boxes.append([xs.min() * scale, ys.min() * scale, (xs.max() + 1) * scale, (ys.max() + 1) * scale])
        k = len(ms)
        gt = torch.from_numpy(np.stack(ms)).to(dev)
        c = torch.tensor(clicks, device=dev, dtype=torch.float32)[:, None]
        pe = sam.prompt_encoder
        sp1, de1 = pe(points=(c, torch.ones(k, 1, device=dev, dtype=torch.int64)), boxes=None, masks=None)
        sp2, de2 = pe(points=None, boxes=torch.tensor(boxes, device=dev, dtype=torch.float32), masks=None)
        for name, sp, de in (("click", sp1, de1), ("box", sp2, de2)):
            low, iou_pred = decode(sam, emb.expand(k, -1, -1, -1), sp, de.expand(k, -1, -1, -1))
            up = F.interpolate(low.float(), (s, s), mode="bilinear", align_corners=False)
            up = F.interpolate(up[..., :nh, :nw], (h, w), mode="bilinear", align_corners=False)
            ious = iou_of(up, gt.float())
            if name == "click":
                best = iou_pred[:, 1:].argmax(1) + 1
                res["click"] += ious.gather(1, best[:, None])[:, 0].tolist()
                res["click_mask0"] += ious[:, 0].tolist()
            else:
                res["box"] += ious[:, 0].tolist()
    sam.train()
    return {f"mean_iou_{k}": float(np.mean(v)) for k, v in res.items()} | {"instances": len(res["box"])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=Path("/tmp/shapes"))
    p.add_argument("--eval-root", type=Path, default=None)
    p.add_argument("--eval-images", type=int, default=300)
    p.add_argument("--out", type=Path, default=Path("/tmp/sam_shapes.pt"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--minutes", type=float, default=4.5)
    p.add_argument("--max-steps", type=int, default=10**9)
    p.add_argument("--batch", type=int, default=48)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--lr", type=float, default=8e-4)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--dim", type=int, default=192)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--init", type=Path, default=None, help="continue from this checkpoint")
    args = p.parse_args()
    torch.manual_seed(0)
    dev = torch.device(args.device)
    t0 = time.time()
    imgs, labs, cnts = load_split(args.root / "train", args.image_size)
    images = torch.from_numpy(imgs).to(dev)
    labels = torch.from_numpy(labs).to(dev)
    counts = torch.from_numpy(cnts).to(dev)
    print(f"loaded {len(imgs)} train images in {time.time() - t0:.1f}s", flush=True)

    sam = build_sam_small(
        image_size=args.image_size, encoder_embed_dim=args.dim, depth=args.depth,
        num_heads=args.heads, global_attn_indexes=(args.depth // 2 - 1, args.depth - 1),
        window_size=8, prompt_embed_dim=128, decoder_mlp_dim=512, decoder_num_heads=8,
        iou_head_hidden_dim=128,
    )
    if args.init is not None:
        from detseg.weights.sam_arch import load_sam

        sam = load_sam(args.init)
        print(f"continuing from {args.init}", flush=True)
    sam = sam.to(dev)
    sam.train()
    n_params = sum(q.numel() for q in sam.parameters())
    print(f"model: {n_params / 1e6:.2f} M parameters", flush=True)
    opt = torch.optim.AdamW(sam.parameters(), lr=args.lr, weight_decay=0.05)
    gen = torch.Generator(device=dev).manual_seed(0)
    budget = args.minutes * 60
    start, step, ema = time.time(), 0, None
    use_amp = dev.type == "cuda"
    while step < args.max_steps:
        frac = (time.time() - start) / budget
        if frac >= 1:
            break
        lr = args.lr * min(1.0, (step + 1) / 200) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
        for group in opt.param_groups:
            group["lr"] = lr
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
            loss = train_step(sam, images, labels, counts, args, gen, dev)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(sam.parameters(), 1.0)
        opt.step()
        step += 1
        ema = float(loss) if ema is None else 0.98 * ema + 0.02 * float(loss)
        if step % 100 == 0 or step == 1:
            print(f"step {step} t={time.time() - start:.0f}s lr={lr:.2e} loss={ema:.4f}", flush=True)
    train_s = time.time() - start
    print(f"trained {step} steps in {train_s:.1f}s", flush=True)
    sam.eval()
    save_sam_checkpoint(sam.cpu(), args.out)
    sam.to(dev)

    eval_root = args.eval_root or args.root / "test"
    if not (eval_root / "instances.json").is_file():
        from detseg.data.shapes import generate_shapes

        generate_shapes(eval_root, args.eval_images, EVAL_SEED, workers=8)
    scores = evaluate(sam, eval_root, args, dev)
    info = {
        "steps": step, "train_seconds": round(train_s, 1), "device": str(dev),
        "device_name": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
        "params": n_params, "args": {k: str(v) for k, v in vars(args).items()},
        "eval_root": str(eval_root), **scores,
    }
    args.out.with_suffix(".json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info, indent=2), flush=True)


if __name__ == "__main__":
    main()
