"""Bad input gives an InputError naming the file, the record, the field and the value."""

from __future__ import annotations

import copy
import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detseg.errors import DetsegError, InputError
from detseg.eval.metrics import CocoEvaluation, evaluate
from detseg.eval.report import build_report
from tests.eval.synthetic import make_problem

GT, RES = make_problem(11, n_images=6, n_cats=3, dets_per_image=4)
SGT, SRES = make_problem(12, n_images=4, n_cats=2, dets_per_image=3, segm=True)


def _res(**change):
    res = copy.deepcopy(RES)
    res[1].update(change)
    return res


@pytest.mark.parametrize("results, match", [
    (_res(image_id=123456789), r"results\[1\]: field 'image_id': unknown image id 123456789"),
    (_res(category_id=777), r"results\[1\]: field 'category_id': unknown category id 777"),
    (_res(bbox=[1, 2, -3, 4]), r"results\[1\]: field 'bbox'.*negative width or height"),
    (_res(bbox=[1, 2, float("nan"), 4]), r"results\[1\]: field 'bbox'.*NaN or infinite"),
    (_res(bbox=[1, 2, 3]), r"results\[1\]: field 'bbox': expected a list of 4 numbers, found \[1, 2, 3\]"),
    (_res(bbox=["1", 2, 3, 4]), r"results\[1\]: field 'bbox': expected a list of 4 numbers"),
    (_res(score=float("nan")), r"results\[1\]: field 'score': expected a finite number, found nan"),
    (_res(score=float("inf")), r"results\[1\]: field 'score': expected a finite number, found inf"),
    (_res(score="high"), r"results\[1\]: field 'score': expected a number, found 'high'"),
    (_res(image_id=[1]), r"results\[1\]: field 'image_id': unknown image id \[1\]"),
    ([{"image_id": GT["images"][0]["id"]}], r"results\[0\]: missing field 'category_id'"),
    ([1, 2], r"results\[0\]: expected an object, found int"),
    ({"annotations": []}, r"results\[.*expected a Detections object"),
])
def test_bad_results(results, match):
    with pytest.raises(InputError, match=match):
        evaluate(GT, results)


def test_bad_results_name_the_file(tmp_path):
    path = tmp_path / "res.json"
    path.write_text(json.dumps(_res(category_id=777)))
    with pytest.raises(InputError, match=rf"{path}: results\[1\]: field 'category_id'"):
        evaluate(GT, path)
    path.write_text('[{"image_id": 1, "bbox": [1, 2')
    with pytest.raises(InputError, match=rf"{path}: malformed JSON at line 1"):
        evaluate(GT, path)
    path.write_text('{"not": "a list"}')
    with pytest.raises(InputError, match="expected a JSON list of result objects, found dict"):
        evaluate(GT, path)
    with pytest.raises(InputError, match="not found"):
        evaluate(GT, tmp_path / "missing.json")


def test_segm_results_without_masks():
    res = copy.deepcopy(SRES)
    del res[2]["segmentation"]
    with pytest.raises(InputError, match=r"results\[2\]: missing field 'segmentation'.*segm needs a mask"):
        evaluate(SGT, res, "segm")
    with pytest.raises(InputError, match=r"missing field 'segmentation'"):
        evaluate(SGT, [{k: v for k, v in r.items() if k != "segmentation"} for r in SRES], "segm")


def test_segm_mask_of_the_wrong_size():
    res = copy.deepcopy(SRES)
    res[0]["segmentation"] = dict(res[0]["segmentation"], size=[5, 5])
    with pytest.raises(InputError, match=r"results\[0\]: field 'segmentation.size': expected the image size"):
        evaluate(SGT, res, "segm")


@pytest.mark.parametrize("section, index", [("annotations", 3), ("images", 2), ("categories", 1)])
def test_gt_duplicate_ids(section, index):
    gt = copy.deepcopy(GT)
    gt[section][index]["id"] = gt[section][0]["id"]
    with pytest.raises(InputError, match=rf"{section}\[{index}\]: duplicate id"):
        evaluate(gt, RES)


def test_gt_bad_fields():
    gt = copy.deepcopy(GT)
    gt["annotations"][0]["bbox"] = [0, 0, float("nan"), 2]
    with pytest.raises(InputError, match=r"annotations\[0\]: field 'bbox'"):
        evaluate(gt, RES)
    gt = copy.deepcopy(GT)
    gt["annotations"][1]["image_id"] = -5
    with pytest.raises(InputError, match=r"annotations\[1\]: field 'image_id': unknown image id -5"):
        evaluate(gt, RES)
    with pytest.raises(InputError, match="field 'images': expected a list"):
        evaluate({"annotations": []}, RES)


def test_gt_without_area_falls_back_to_box_area_with_a_warning():
    gt = copy.deepcopy(GT)
    for a in gt["annotations"]:
        a.pop("area")
    with pytest.warns(UserWarning, match="no 'area'"):
        ev = evaluate(gt, RES)
    assert math.isfinite(ev.stats[0])


# ---- property: random malformed input -> a result or a clear error, never a library traceback
_junk = st.one_of(
    st.none(), st.booleans(), st.integers(-10**20, 10**20), st.text(max_size=5),
    st.floats(allow_nan=True, allow_infinity=True), st.lists(st.integers(-5, 5), max_size=5),
    st.lists(st.floats(-1e3, 1e3), min_size=4, max_size=4), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.fixed_dictionaries({"size": st.lists(st.integers(-2, 300), max_size=3),
                           "counts": st.one_of(st.text(max_size=8), st.lists(st.integers(-2, 50), max_size=6))}),
    # the images' size, so that garbage counts reach the RLE parser (pycocotools' C code
    # crashes the process on some of them: detseg must reject them first)
    st.fixed_dictionaries({"size": st.just([240, 320]),
                           "counts": st.one_of(st.text(st.characters(min_codepoint=32, max_codepoint=127), max_size=12),
                                               st.lists(st.integers(-3, 80000), max_size=4))}),
)
_fields = st.sampled_from(["image_id", "category_id", "bbox", "score", "segmentation", "id",
                           "iscrowd", "area", "height", "width", "images", "annotations"])


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), segm=st.booleans())
def test_random_malformed_input_never_crashes(data, segm):
    gt, res = copy.deepcopy(SGT if segm else GT), copy.deepcopy(SRES if segm else RES)
    for _ in range(data.draw(st.integers(1, 3))):
        target = data.draw(st.sampled_from(["gt_ann", "gt_img", "res", "res_top", "gt_top"]))
        key, value = data.draw(_fields), data.draw(_junk)
        anns, imgs = gt.get("annotations"), gt.get("images")
        if target == "gt_ann" and isinstance(anns, list) and anns and isinstance(anns[0], dict):
            anns[data.draw(st.integers(0, len(anns) - 1))][key] = value
        elif target == "gt_img" and isinstance(imgs, list) and imgs and isinstance(imgs[0], dict):
            imgs[data.draw(st.integers(0, len(imgs) - 1))][key] = value
        elif target == "res" and isinstance(res, list) and res and all(isinstance(r, dict) for r in res):
            rec = res[data.draw(st.integers(0, len(res) - 1))]
            if data.draw(st.booleans()):
                rec[key] = value
            else:
                rec.pop(key, None)
        elif target == "res_top" and isinstance(res, list):
            res = value if data.draw(st.booleans()) else res[:data.draw(st.integers(0, 2))]
        elif target == "gt_top":
            gt[key] = value
    try:
        ev = evaluate(gt, res, "segm" if segm else "bbox")
    except DetsegError as exc:
        assert str(exc)  # a message, not a traceback from numpy or pycocotools
    else:
        assert isinstance(ev, CocoEvaluation) and ev.stats.shape == (12,)
        report = build_report(ev)  # the analyses must cope with whatever evaluate accepted
        assert len(report["stats"]) == 12


def test_rle_string_check_accepts_pycocotools_encodings_and_rejects_garbage():
    import numpy as np
    from pycocotools import mask as mask_utils

    from detseg.eval.rle import rle_strings_check

    rng = np.random.default_rng(0)
    counts, areas = [], []
    for i in range(200):
        h, w = (int(v) for v in rng.integers(1, 70, 2))
        m = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        if i % 5 == 0:
            m[:] = i % 2
        counts.append(mask_utils.encode(np.asfortranarray(m))["counts"].decode("ascii"))
        areas.append(h * w)
    assert rle_strings_check(counts, areas) == (-1, "")
    for bad, why in (("zz", "characters outside"), ("PP", "cut off"), ("0", "sum to 0"),
                     ("P" * 6 + "0", "more than 6")):
        assert rle_strings_check(counts[:3] + [bad], areas[:3] + [100])[0] == 3
        assert why in rle_strings_check([bad], [100])[1]
