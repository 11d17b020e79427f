"""detseg.eval: COCO metrics identical to pycocotools, fast, plus the analyses people need.

    from detseg.eval import evaluate
    ev = evaluate("instances.json", "results.json", "bbox")   # or {image_id: Detections}
    ev.stats            # the 12 COCO numbers, pycocotools' order
    ev.precision        # (T, R, K, A, M), bit-identical to COCOeval.eval["precision"]

Works without onnxruntime: only `detseg eval --model` (predict, then evaluate) loads it.
"""

from detseg.eval.metrics import STAT_NAMES, CocoEvaluation, EvalParams, evaluate

__all__ = ["STAT_NAMES", "CocoEvaluation", "EvalParams", "evaluate"]
