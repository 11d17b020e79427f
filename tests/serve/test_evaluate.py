"""The Evaluate tab: its data (detseg.serve.evalset) against detseg.eval, and its endpoints
through gradio_client on an app launched on 127.0.0.1 inside the test."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from detseg.eval import browse, evaluate
from detseg.eval.analysis import per_class_table, prf_at
from detseg.serve import evalset as es_mod
from tests.serve import evaluate_data
from tests.serve.conftest import free_port

# the fixtures this module shares with test_evaluate_browser.py
files, evalset, eval_served = evaluate_data.files, evaluate_data.evalset, evaluate_data.eval_served


def test_loading_evaluates_each_run_once_and_finds_the_images(evalset, files):
    ref = evaluate(files["gt"], files["a"])
    a, b = evalset.runs
    np.testing.assert_array_equal(a.ev.stats, ref.stats)
    assert a.ev.stats[0] == pytest.approx(0.370, abs=0.005)  # YOLOX-Nano's AP on these images
    assert b.ev.stats[0] < a.ev.stats[0] - 0.05  # the degraded copy really is worse
    assert b.ev.gt is a.ev.gt  # the ground truth is read once
    assert (a.name, b.name) == ("yolox_nano", "yolox_shifted")
    assert evalset.n_found == len(evalset.image_paths) == 11
    md = es_mod.summary_markdown(evalset, 0.3)
    assert "11 images, all found on disk" in md and "| AP | 0.37" in md


def test_tables_are_the_library_numbers(evalset):
    head, rows = es_mod.class_table(evalset, 0.3)
    a = evalset.runs[0].ev
    assert head[:4] == ["class", "n_gt", "AP yolox_nano", "AP50 yolox_nano"] and len(rows) == 80
    pc, pr = per_class_table(a), prf_at(a, 0.5, 0.3)["per_class"]
    person = evalset.cat_names.index("person")
    assert [r[1] for r in rows] == sorted((r["n_gt"] for r in pc), reverse=True)
    row = rows[0]  # person: the most ground truth
    assert row[0] == "person" and row[1] == pc[person]["n_gt"] > 10
    assert row[2] == pytest.approx(pc[person]["AP"], abs=1e-4)
    assert row[6:9] == [pr[person]["tp"], pr[person]["fp"], pr[person]["fn"]]


def test_drawing_shows_each_outcome_in_its_colour(evalset):
    r = evalset.runs[0]
    j = int(np.argmax(browse.image_counts(r.outcomes, evalset.gt.cat, 0.3).sum(1)))
    image, found = es_mod.read_image_or_blank(evalset, j)
    v = browse.image_view(r.ev, r.outcomes, j, 0.3)
    assert found and v.counts[0] > 0 and v.counts[1] > 0
    drawn = es_mod.draw_view(image, v, evalset.cat_names)
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    assert not np.array_equal(drawn, image) and image.flags.writeable  # the input is untouched
    for rgb in (es_mod.TP_RGB, es_mod.FP_RGB, es_mod.GT_RGB):
        assert (np.abs(drawn.astype(int) - rgb).sum(axis=2) < 30).sum() > 50, rgb
    big = es_mod.draw_view(np.zeros((3000, 2000, 3), np.uint8), v, evalset.cat_names, max_side=960)
    assert max(big.shape[:2]) == 960  # large images are shown downscaled


def test_missing_images_keep_tables_and_say_so(files):
    es = es_mod.load_evalset(files["syn_gt"], [files["syn_res"]])
    assert es.n_found == 0 and len(es.image_paths) == 300
    assert "Images are missing: none of the 300 images was found" in es_mod.summary_markdown(es, 0.3)
    image, found = es_mod.read_image_or_blank(es, 0)
    assert not found and image.shape == (240, 320, 3)
    pr = es_mod.pr_figure(es, 0)
    assert pr.ndim == 3 and pr.shape[2] == 3 and pr.std() > 10


# ---- the page's endpoints ---------------------------------------------------------------
def _client(url: str):
    from gradio_client import Client

    return Client(url, verbose=False)


def _rows(table: dict) -> list:
    return (table.get("value") or table)["data"]


def test_filter_and_browse_through_the_api(eval_served, evalset):
    from detseg.serve.app import API_NAMES

    c = _client(eval_served)
    api = c.view_api(return_format="dict", print_info=False)
    assert set(api["named_endpoints"]) == {f"/{n}" for n in API_NAMES}
    assert not api["unnamed_endpoints"]

    out = c.predict("person", "FP", 0.3, api_name="/eval_filter")
    summary, classes, pr, images, note, _, view_a, view_b, objects, position, *status = out
    assert status == ["", ""]  # no error
    person = evalset.cat_names.index("person")
    want = [browse.select_images(r.outcomes, evalset.gt.cat, 0.3, person, "FP") for r in evalset.runs]
    order = np.union1d(*want)
    assert note.startswith(f"{order.size} images match") and 0 < order.size < 11
    assert [int(r[1]) for r in _rows(images)] and {int(r[1]) for r in _rows(images)} == {
        int(evalset.gt.image_ids[j]) for j in order}
    assert Image.open(view_a["value"]).size == Image.open(view_b["value"]).size
    assert view_b["visible"] is True
    assert {row[2] for row in _rows(objects)} == {"person"}  # only the selected class is shown
    first_id = int(_rows(images)[0][1])
    assert f"Image 1 of {order.size} · id {first_id}" in position
    # the image's counts are the library's
    j = int(np.flatnonzero(evalset.gt.image_ids == first_id)[0])
    a_counts = browse.image_view(evalset.runs[0].ev, evalset.runs[0].outcomes, j, 0.3, person).counts
    assert "yolox_nano: TP {} FP {} FN {}".format(*a_counts) in position

    pos2 = c.predict(api_name="/eval_next")[3]
    assert pos2.startswith(f"Image 2 of {order.size}")
    pos1 = c.predict(api_name="/eval_prev")[3]
    assert pos1 == position
    last = c.predict(api_name="/eval_prev")[3]  # wraps around
    assert last.startswith(f"Image {order.size} of {order.size}")
    shown = c.predict(139, api_name="/eval_show")[3]
    assert "id 139 · 000000000139.jpg" in shown


def test_errors_reach_the_page_as_messages(eval_served, files):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    c = _client(eval_served)
    with pytest.raises(AppError, match="typo is not in the list of choices"):  # Gradio checks it
        c.predict("person", "typo", 0.3, api_name="/eval_filter")
    with pytest.raises(AppError, match="image id: 42 is not in"):
        c.predict(42, api_name="/eval_show")
    with pytest.raises(AppError, match="unknown image id"):  # results of another dataset
        c.predict(handle_file(str(files["gt"])), handle_file(str(files["syn_res"])), None, "bbox",
                  "any", 0.3, api_name="/eval_load")


def test_upload_in_the_page_replaces_the_evaluation_for_this_session(eval_served, files):
    from gradio_client import handle_file

    c = _client(eval_served)
    out = c.predict(handle_file(str(files["syn_gt"])), handle_file(str(files["syn_res"])), None,
                    "bbox", "FN", 0.5, api_name="/eval_load")
    summary, classes, _, images, note, cls, view_a, view_b, _, position, *_ = out
    assert "Images are missing: none of the 300 images was found" in summary
    assert [c_[0] for c_ in cls["choices"]][1:] == [f"class_{i}" for i in _syn_cats(files)]
    assert view_b["visible"] is False and Path(view_a["value"]).is_file()
    assert "image not found on disk" in position
    # the filters given apply at once: images with a missed object at score 0.5, as the library says
    es = es_mod.load_evalset(files["syn_gt"], [files["syn_res"]])
    want = browse.select_images(es.runs[0].outcomes, es.gt.cat, 0.5, None, "FN")
    assert len(_rows(images)) == int(note.split()[0]) == want.size > 0
    assert [int(r[1]) for r in _rows(images)] == es.gt.image_ids[want].tolist()
    # another session still sees the evaluation given at start-up
    other = _client(eval_served).predict("all classes", "any", 0.3, api_name="/eval_filter")
    assert "11 images, all found on disk" in other[0]


def _syn_cats(files) -> list[int]:
    return sorted(c["id"] for c in json.loads(Path(files["syn_gt"]).read_text())["categories"])


@pytest.mark.parametrize(("args", "message"), [
    (["--pred", "a.json"], "--gt and --pred: give both"),
    (["--gt", "missing.json", "--pred", "a.json"], "missing.json: ground-truth file not found"),
    (["--gt", "g.json", "--pred", "a", "--pred", "b", "--pred", "c"], "expected one or two"),
])
def test_bad_evaluate_options_are_refused_before_serving(args, message):
    from detseg.cli import app

    result = CliRunner().invoke(app, ["serve", *args])
    assert result.exit_code != 0
    assert message in str(result.exception) + result.output


def test_serve_command_opens_the_evaluate_tab(files, yolox_nano, sam_paths):
    """Acceptance: `detseg serve --gt --pred A --pred B` evaluates once, says so, and serves
    the tab on 127.0.0.1 with the evaluation filled in for a new session."""
    from tests.serve.test_cli import _serve, _stop, _wait_listening

    port = free_port()
    proc = _serve(["--port", str(port), "--model", str(yolox_nano), "--head", "yolox",
                   "--sam-encoder", str(sam_paths[0]), "--sam-decoder", str(sam_paths[1]),
                   "--gt", str(files["gt"]), "--pred", str(files["a"]), "--pred", str(files["b"])])
    try:
        _wait_listening(proc, port)
        summary = _client(f"http://127.0.0.1:{port}/").predict("all classes", "any", 0.3,
                                                               api_name="/eval_filter")[0]
    finally:
        out = _stop(proc)
    assert "11 images, all found on disk" in summary and "| AP | 0.370 | 0.095 |" in summary
    assert "evaluate: instances.json: 11 images (11 found on disk); yolox_nano AP 0.370" in out


# ---- the IoU threshold -------------------------------------------------------------------
def test_the_iou_threshold_changes_every_count(eval_served, evalset):
    """/eval_filter's fourth input: at IoU 0.75 the tab shows the library's outcomes at 0.75
    (image list, per-image counts, summary, position), which differ from those at 0.5."""
    from gradio_client.exceptions import AppError

    c = _client(eval_served)
    got = {}
    for iou in (0.5, 0.75):
        summary, classes, _, images, note, _, _, _, objects, position, *status = c.predict(
            "all classes", "any", 0.3, iou, api_name="/eval_filter")
        assert status == ["", ""] and f"at IoU {iou:.2f}" in note
        assert f"TP / FP / FN @ score ≥ 0.30, IoU {iou:.2f}" in summary
        outs = [r.at(iou) for r in evalset.runs]
        counts = [browse.image_counts(o, evalset.gt.cat, 0.3) for o in outs]
        ids = evalset.gt.image_ids.tolist()
        for row in _rows(images):  # each listed image's TP/FP/FN for A and B: the library's
            j = ids.index(int(row[1]))
            assert row[3:] == ["/".join(str(int(v)) for v in c_[j]) for c_ in counts]
        first = ids.index(int(_rows(images)[0][1]))
        view = browse.image_view(evalset.runs[0].ev, outs[0], first, 0.3)
        assert "yolox_nano: TP {} FP {} FN {}".format(*view.counts) in position
        prf = prf_at(evalset.runs[0].ev, iou, 0.3)["overall"]
        assert f"| {prf['tp']} / {prf['fp']} / {prf['fn']} |" in summary
        got[iou] = (sum(c_.sum(axis=0) for c_ in counts), [r[3:] for r in _rows(images)], summary)
    tp50, tp75 = got[0.5][0][0], got[0.75][0][0]
    assert tp75 < tp50 and got[0.75][0][1] > got[0.5][0][1]  # fewer TP, more FP when stricter
    assert got[0.75][1] != got[0.5][1] and got[0.75][2] != got[0.5][2]
    # the filters follow it: localisation errors at 0.75 are the library's at 0.75
    images, note = c.predict("all classes", "localisation", 0.3, 0.75, api_name="/eval_filter")[3:5]
    want = np.union1d(*[browse.select_images(r.at(0.75), evalset.gt.cat, 0.3, None, "localisation")
                        for r in evalset.runs])
    assert {int(r[1]) for r in _rows(images)} == set(evalset.gt.image_ids[want].tolist())
    with pytest.raises(AppError, match=r"IoU threshold: expected one of \[0.5, 0.55, .*found 0.52"):
        c.predict("all classes", "any", 0.3, 0.52, api_name="/eval_filter")


# ---- a failing action redraws its outputs, with the reason in the tab ------------------------
@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict[str, Path]:
    """A 30-image synthetic evaluation (no images, no model: runs without the assets) and
    three bad inputs."""
    d = tmp_path_factory.mktemp("small")
    gt, res = evaluate_data.synthetic_set(d, n_images=30)
    (d / "notes.json").write_text("these are notes, not JSON")
    recs = json.loads(res.read_text())
    for r in recs:
        r["image_id"] += 10_000
    (d / "other_dataset.json").write_text(json.dumps(recs))
    return {"gt": gt, "res": res, "notes": d / "notes.json", "other": d / "other_dataset.json"}


def _tab(preloaded):
    """The Evaluate tab alone, and {api name: (handler, its .failure follow-up)}."""
    import gradio as gr

    from detseg.serve import evaluate as eval_tab

    with gr.Blocks() as demo, gr.Tabs():
        eval_tab.build_tab(demo, preloaded)
    fns = list(demo.fns.values())
    out = {}
    for f in fns:
        if f.api_name in eval_tab.API_NAMES:
            (g,) = [g for g in fns if g.trigger_after == f._id and g.trigger_only_on_failure]
            # the same outputs; after a filter or upload, the filter controls too
            n = len(f.outputs)
            assert [o._id for o in g.outputs[:n]] == [o._id for o in f.outputs]
            assert [o.elem_id for o in g.outputs[n:]] == (
                ["eval-error", "eval-score", "eval-iou"] if n == 13 else [])
            out[f.api_name] = (f.fn, g.fn)
    assert set(out) == set(eval_tab.API_NAMES)
    return out


@pytest.mark.parametrize(("files_", "iou_type", "says"), [
    (("notes", "res"), "bbox", r"notes\.json: malformed JSON at line 1"),
    (("gt", "other"), "bbox", r"other_dataset\.json: results\[0\]: field 'image_id': unknown image id"),
    (("gt", "res"), "segm", r"gt\.json: annotations\[0\]: missing field 'segmentation'"),
])
def test_a_refused_upload_keeps_the_view_and_says_why(small, files_, iou_type, says):
    import gradio as gr

    from detseg.serve.evaluate import Browse

    es = es_mod.load_evalset(small["gt"], [small["res"]])
    tab = _tab(es)
    load, load_failed = tab["eval_load"]
    b = Browse(key="cli")
    before = tab["eval_filter"][0](b, "all classes", "FN", 0.4, 0.6)
    tab["eval_next"][0](b)
    pos = b.pos
    with pytest.raises(gr.Error, match=says):
        load(b, str(small[files_[0]]), str(small[files_[1]]), None, iou_type, "any", 0.3, 0.5)
    after = load_failed(b)
    load_status, status = after[11:13]
    assert after[13:] == ("FN", 0.4, 0.6)  # the filter controls show the view's values
    assert re.search(says, load_status) and load_status.startswith("**Error:**") and status == ""
    # the same evaluation, filters and image as before the refused upload
    assert b.key == "cli" and (b.error, b.score, b.iou, b.pos) == ("FN", 0.4, 0.6, pos)
    assert after[1] == before[1] and _value(after[2]) == _value(before[2])  # summary, classes
    assert after[10] == tab["eval_show"][0](b, int(es.gt.image_ids[b.order[pos]]))[4]  # position
    # a success clears the message
    assert tab["eval_next"][0](b)[-2:] == ("", "")


def test_refused_filters_and_browsing_keep_the_view_and_say_why(small):
    import gradio as gr

    from detseg.serve.evaluate import Browse

    es = es_mod.load_evalset(small["gt"], [small["res"]])
    tab = _tab(es)
    b = Browse(key="cli")
    shown = tab["eval_filter"][0](b, "all classes", "FP", 0.3, 0.75)
    for name, args, says in (
            ("eval_filter", ("all classes", "any", 0.3, 0.52), "IoU threshold: expected one of"),
            ("eval_filter", ("all classes", "any", "high", 0.5), "score threshold: expected a number"),
            ("eval_filter", ("no_such_class", "any", 0.3, 0.5), "class: expected one of"),
            ("eval_show", (42_000,), "image id: 42000 is not in ")):
        handler, failed = tab[name]
        with pytest.raises(gr.Error, match=says):
            handler(b, *args)
        again = failed(b)
        load_status, status = again[11:13] if name == "eval_filter" else again[5:7]
        assert load_status == "" and says in status and status.startswith("**Error:**")
        if name == "eval_filter":  # the controls go back to the view's values
            assert again[6].value == "all classes" and again[13:] == ("FP", 0.3, 0.75)
        assert (b.error, b.score, b.iou) == ("FP", 0.3, 0.75)  # nothing moved
        assert again[10 if name == "eval_filter" else 4] == shown[10]  # the same image
    # no evaluation at all (no --gt/--pred, nothing uploaded): the tab says what to do
    nothing = Browse()
    with pytest.raises(gr.Error, match="no evaluation loaded"):
        tab["eval_next"][0](nothing)
    assert "no evaluation loaded" in tab["eval_next"][1](nothing)[-1]
    assert "Upload files above" in _tab(None)["eval_load"][1](nothing)[1]


def _value(x):
    return x.value if hasattr(x, "value") else x


# ---- segm: the masks' outlines ------------------------------------------------------------
@pytest.fixture(scope="module")
def segm_set(tmp_path_factory):
    """A small segm problem (polygon ground truth, crowd as RLE, compressed-RLE results) with
    grey canvases for images: (ground truth dict, results list, EvalSet)."""
    from tests.eval.synthetic import make_problem

    d = tmp_path_factory.mktemp("segm")
    gt, res = make_problem(seed=3, n_images=12, n_cats=3, dets_per_image=6, segm=True)
    (d / "gt.json").write_text(json.dumps(gt))
    (d / "res.json").write_text(json.dumps(res))
    return gt, res, es_mod.load_evalset(d / "gt.json", [d / "res.json"], "segm")


def test_segm_views_draw_each_objects_own_mask_outline(segm_set):
    from detseg.eval.outlines import segmentation_outlines

    gt, res, es = segm_set
    r = es.runs[0]
    ann = {a["id"]: a for a in gt["annotations"]}
    drawn = 0
    for j in range(len(es.gt.image_ids)):
        v = browse.image_view(r.ev, r.outcomes, j, 0.0)
        g_lines, d_lines = es_mod.view_outlines(es, 0, v)
        assert len(g_lines) == len(v.gt_box) and len(d_lines) == len(v.det_box)
        h, w = gt["images"][0]["height"], gt["images"][0]["width"]
        for k, lines in zip(v.gt_index.tolist(), g_lines, strict=True):  # the record's own mask
            seg = ann[int(es.gt.ids[k])]["segmentation"]
            want = segmentation_outlines(seg, h, w)
            assert len(lines) == len(want) and all(np.array_equal(a, b) for a, b in zip(lines, want, strict=True))
        for k, lines in zip(v.det_index.tolist(), d_lines, strict=True):
            want = segmentation_outlines(res[k]["segmentation"], h, w)
            assert len(lines) == len(want) and all(np.array_equal(a, b) for a, b in zip(lines, want, strict=True))
        again = es_mod.view_outlines(es, 0, v)[1]
        assert all(a is b for a, b in zip(again, d_lines, strict=True))  # traced once, then kept
        drawn += sum(len(lines) > 0 for lines in d_lines)
    assert drawn > 30


def test_segm_outlines_are_drawn_inside_the_boxes(segm_set):
    """On a segm problem the picture differs from the box-only one inside the boxes, along
    each mask's outline: predictions in their solid colour, ground truth dashed."""
    import cv2

    _, _, es = segm_set
    r = es.runs[0]

    def inside(box, lines, shape) -> np.ndarray:
        """(H, W) bool: the outline's pixels at least 4 px inside the box."""
        on = np.zeros(shape, np.uint8)
        cv2.polylines(on, [np.rint(p).astype(np.int32) for p in lines], True, 1, 1)
        x1, y1, x2, y2 = box
        keep = np.zeros_like(on, bool)
        keep[int(np.ceil(y1)) + 4:int(y2) - 3, int(np.ceil(x1)) + 4:int(x2) - 3] = True
        return (on > 0) & keep

    def one(v, kind: str, k: int):
        """``v`` with only its ``k``-th ground truth or detection (no other object on top)."""
        sel = {f: (getattr(v, f)[k:k + 1] if f.startswith(kind) else getattr(v, f)[:0])
               for f in v.__dataclass_fields__ if f.startswith(("gt_", "det_"))}
        return dataclasses.replace(v, **sel)

    checked: list[tuple[str, int]] = []
    for j in range(len(es.gt.image_ids)):
        v = browse.image_view(r.ev, r.outcomes, j, 0.3)
        g_lines, d_lines = es_mod.view_outlines(es, 0, v)
        canvas = np.zeros((*es.gt.image_hw[j], 3), np.uint8)
        boxes = es_mod.draw_view(canvas, v, es.cat_names)
        masks = es_mod.draw_view(canvas, v, es.cat_names, gt_outlines=g_lines, det_outlines=d_lines)
        assert boxes.shape == masks.shape == canvas.shape and (masks != boxes).any()
        for kind, lines_all, states, colours in (
                ("det_", d_lines, v.det_state, (es_mod.TP_RGB, es_mod.FP_RGB, es_mod.IGNORED_RGB)),
                ("gt_", g_lines, v.gt_state, (es_mod.GT_RGB, es_mod.FN_RGB, es_mod.IGNORED_RGB))):
            for k, (lines, st) in enumerate(zip(lines_all, states, strict=True)):
                rgb, w1 = colours[int(st)], one(v, kind, k)
                box = (w1.det_box if kind == "det_" else w1.gt_box)[0]
                px = inside(box, lines, canvas.shape[:2])
                if px.sum() < 40:  # a tiny mask: its outline is the box's edge
                    continue
                drawn = es_mod.draw_view(canvas, w1, es.cat_names, gt_outlines=[lines] if kind == "gt_" else [],
                                         det_outlines=[lines] if kind == "det_" else [])
                before = es_mod.draw_view(canvas, w1, es.cat_names)
                hit = (np.abs(drawn[px].astype(int) - rgb).sum(axis=1) < 60).mean()
                was = (np.abs(before[px].astype(int) - rgb).sum(axis=1) < 60).mean()  # a label's
                if kind == "det_":
                    assert hit > 0.75 and was < hit - 0.4, (hit, was)  # solid, in the box's colour
                else:
                    assert 0.2 < hit < 0.8 and was < hit - 0.1, (hit, was)  # dashed: on and off
                checked.append((kind, int(st)))
    assert {("det_", browse.TP), ("det_", browse.FP), ("gt_", browse.TP), ("gt_", browse.FN)} <= set(checked)
    # a bbox evaluation draws no outline
    bbox = es_mod.load_evalset(es.gt_path, [es.runs[0].path], "bbox")
    assert es_mod.view_outlines(bbox, 0, v) == (None, None)


def test_an_uploaded_file_is_named_as_the_user_named_it(small):
    # Gradio keeps an upload at <upload folder>/<hash>/<name>: the message names <name>
    import shutil

    import gradio as gr
    from gradio.utils import get_upload_folder

    from detseg.serve.evaluate import Browse

    folder = Path(get_upload_folder()) / "0123abcd-detseg-test"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        up = folder / "notes.json"
        shutil.copy(small["notes"], up)
        es = es_mod.load_evalset(small["gt"], [small["res"]])
        load, load_failed = _tab(es)["eval_load"]
        b = Browse(key="cli")
        with pytest.raises(gr.Error) as err:
            load(b, str(up), str(small["res"]), None, "bbox", "any", 0.3, 0.5)
        assert err.value.message.startswith("notes.json: malformed JSON")
        assert str(folder) not in load_failed(b)[11]
        # a file the user named by its path (--gt/--pred, or a local client) keeps its path
        with pytest.raises(gr.Error, match=re.escape(str(small["notes"]))):
            load(b, str(small["notes"]), str(small["res"]), None, "bbox", "any", 0.3, 0.5)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
