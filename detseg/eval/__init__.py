"""detseg.eval: COCO metrics identical to pycocotools, fast, plus the analyses people need.

    from detseg.eval import evaluate
    ev = evaluate("instances.json", "results.json", "bbox")   # or {image_id: Detections}
    ev.stats            # the 12 COCO numbers, pycocotools' order
    ev.precision        # (T, R, K, A, M), bit-identical to COCOeval.eval["precision"]

    from detseg.eval import CocoEvaluator            # piece by piece, shards merged exactly
    acc = CocoEvaluator("instances.json", "bbox"); acc.update(image_id, detections)
    acc.merge(other_shard); acc.compute()            # == evaluate(...) over everything

    from detseg.eval import evaluate_lvis            # LVIS (federated), == the lvis package

Works without onnxruntime: only `detseg eval --model` (predict, then evaluate) loads it.
"""

from detseg.eval.evaluator import CocoEvaluator
from detseg.eval.lvis import evaluate_lvis
from detseg.eval.metrics import STAT_NAMES, CocoEvaluation, EvalParams, evaluate

__all__ = ["STAT_NAMES", "CocoEvaluation", "CocoEvaluator", "EvalParams", "evaluate",
           "evaluate_lvis"]
