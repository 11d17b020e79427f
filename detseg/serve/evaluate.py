"""The Evaluate tab of `detseg serve`: layout and wiring only.

The evaluation runs once (at start-up for ``--gt/--pred``, or when files are uploaded in the
page); filtering and browsing then only look up `detseg.eval.browse` arrays and draw one image.
Named endpoints, for gradio_client as for the page::

    c.predict(handle_file("gt.json"), handle_file("a.json"), None, "bbox", "any", 0.3, 0.5,
              api_name="/eval_load")  # None: no results file B; 0.5: the IoU threshold
    c.predict("all classes", "FP", 0.3, 0.75, api_name="/eval_filter")  # class, error, score, IoU
    c.predict(api_name="/eval_next"); c.predict(api_name="/eval_prev")
    c.predict(139, api_name="/eval_show")     # by COCO image id

The IoU threshold (one of COCO's 0.50, 0.55, ..., 0.95; 0.50 if left out) decides what a match
is everywhere in the tab: TP/FP/FN, error types, filters, the image list, the drawn outcomes, the
dashed PR curve. A refused action (a file that is not COCO JSON, results of another dataset, a
threshold not evaluated, ...) leaves the view as it was, with the reason in the status line
under the Evaluate button (files) or under the browser's controls (filters, browsing); API
clients get it as the exception's message.
"""

from __future__ import annotations

import functools
import re
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
import numpy as np

from detseg.errors import DetsegError, InputError
from detseg.eval import browse
from detseg.serve import evalset as es_mod
from detseg.serve.evalset import EvalSet

TAB_ID = "evaluate"
API_NAMES = ("eval_load", "eval_filter", "eval_show", "eval_next", "eval_prev")
ALL = "all classes"
ERRORS = list(browse.ERROR_FILTERS)
MAX_ROWS = 500  # image rows sent to the page; the browser still walks the whole selection
MAX_UPLOADED = 4  # evaluations uploaded in the page kept in memory (oldest dropped)
NOTHING_LOADED = ("Upload files above, or start with "
                  "`detseg serve --gt GT.json --pred results.json`.")


@dataclass
class Browse:
    """One session's view: which evaluation, the filters, the selected images, the position."""

    key: str | None = None
    cat: int | None = None
    error: str = "any"
    score: float = 0.3
    iou: float = 0.5
    order: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    pos: int = 0
    message: str = ""  # the last failing action's error ("" after a success)
    area: str = ""  # where that message is shown: "load" or "browse"


class Store:
    """Evaluations by key: the one given on the command line, and the last few uploaded."""

    def __init__(self, preloaded: EvalSet | None) -> None:
        self._lock = threading.Lock()
        self.preloaded = preloaded
        self._uploaded: OrderedDict[str, EvalSet] = OrderedDict()

    def add(self, es: EvalSet) -> str:
        key = uuid.uuid4().hex
        with self._lock:
            self._uploaded[key] = es
            while len(self._uploaded) > MAX_UPLOADED:
                self._uploaded.popitem(last=False)
        return key

    def get(self, key: str | None) -> EvalSet:
        if key == "cli" and self.preloaded is not None:
            return self.preloaded
        with self._lock:
            es = self._uploaded.get(key) if key else None
        if es is None:
            raise InputError("no evaluation loaded: upload a ground truth and a results file "
                             "(or start with detseg serve --gt GT.json --pred results.json)"
                             if key is None else "this evaluation was dropped to save memory; "
                             "upload the files again")
        return es


def _upload_names(message: str) -> str:
    """``message`` with Gradio's upload folders cut from file paths: an uploaded file is named
    as the user chose it (``notes.json``), not ``/tmp/gradio/<hash>/notes.json``."""
    from gradio.utils import get_upload_folder

    return re.sub(re.escape(str(get_upload_folder()).rstrip("/")) + r"/[^/\s]+/", "", message)


def _errors_to_page(area: str) -> Callable[[Callable], Callable]:
    """Turn detseg's errors into a message in the page, never a crash.

    The message is kept in the view (first argument, a `Browse`) under ``area`` ("load": the
    files and Evaluate button, "browse": the filters and the image browser) for the
    ``.failure`` redraw, which shows it in that area's status line; a success clears it. API
    clients get the same text as the exception of `gr.Error`.
    """

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(b: Browse, *args: Any, **kwargs: Any) -> Any:
            b.message, b.area = "", ""
            try:
                return fn(b, *args, **kwargs)
            except DetsegError as exc:
                b.message, b.area = _upload_names(str(exc)), area
                raise gr.Error(b.message, print_exception=False) from None

        return wrapper

    return decorate


def _status(b: Browse) -> tuple[str, str]:
    """The two status lines (under the Evaluate button, under the browser's controls)."""
    text = f"**Error:** {b.message}" if b.message else ""
    return (text if b.area == "load" else "", text if b.area != "load" else "")


def _cat_index(es: EvalSet, name: str | None) -> int | None:
    if not name or name == ALL:
        return None
    if name not in es.cat_names:
        raise InputError(f"class: expected one of {ALL!r} or the dataset's classes, found {name!r}")
    return es.cat_names.index(name)


def _select(es: EvalSet, b: Browse) -> tuple[np.ndarray, list[np.ndarray]]:
    """Images passing the filters in any run, costliest first; per-run (I, 3) counts."""
    outs = [r.at(b.iou) for r in es.runs]
    counts = [browse.image_counts(o, es.gt.cat, b.score, b.cat) for o in outs]
    sels = [browse.select_images(o, es.gt.cat, b.score, b.cat, b.error, c)
            for o, c in zip(outs, counts, strict=True)]
    if len(sels) == 1:
        return sels[0], counts
    idx = np.union1d(*sels)
    cost = sum(c[idx, 1] + c[idx, 2] for c in counts)
    return idx[np.argsort(-cost, kind="stable")], counts


def _image_rows(es: EvalSet, order: np.ndarray, counts: list[np.ndarray]) -> tuple[list[str], list[list]]:
    head = ["#", "image_id", "file"] + [f"TP/FP/FN {r.name}" for r in es.runs]
    ids = es.gt.image_ids
    rows = []
    for n, j in enumerate(order[:MAX_ROWS].tolist()):
        p = es.image_paths[j]
        rows.append([n + 1, int(ids[j]), p.name if p is not None else "(not found)",
                     *["/".join(str(int(v)) for v in c[j]) for c in counts]])
    return head, rows


def build_tab(demo: gr.Blocks, preloaded: EvalSet | None = None, concurrency_limit: int = 2,
              session_ttl_s: int = 3600) -> None:
    """Add the Evaluate tab (inside ``demo``'s open ``gr.Tabs``) with its handlers and endpoints.

    ``preloaded``: the evaluation given on the command line, shown to every new page. The
    tab's events queue under their own concurrency id ("evaluate"): browsing never waits
    behind a model call.
    """
    store = Store(preloaded)

    # ---- output builders --------------------------------------------------------------
    def view_outputs(b: Browse) -> tuple:
        """`view_out`'s values: the drawn image(s), its objects and the position line."""
        es = store.get(b.key)
        if not b.order.size:
            return (b, None, gr.Image(value=None, visible=len(es.runs) > 1), [],
                    "No image matches these filters.", *_status(b))
        j = int(b.order[b.pos])
        image, found = es_mod.read_image_or_blank(es, j)
        views = [browse.image_view(r.ev, r.at(b.iou), j, b.score, b.cat) for r in es.runs]
        pics = []
        for k, v in enumerate(views):  # segm: the masks' outlines instead of the boxes
            gt_lines, det_lines = es_mod.view_outlines(es, k, v)
            pics.append(es_mod.draw_view(image, v, es.cat_names, found=found,
                                         gt_outlines=gt_lines, det_outlines=det_lines))
        details = [{"run": r.name, **row} for r, v in zip(es.runs, views, strict=True)
                   for row in v.rows(es.cat_names)]
        counts = " · ".join("{}: TP {} FP {} FN {}".format(r.name, *v.counts)
                            for r, v in zip(es.runs, views, strict=True))
        p = es.image_paths[j]
        where = p.name if p is not None else "**image not found on disk**"
        pos = (f"Image {b.pos + 1} of {b.order.size} · id {int(es.gt.image_ids[j])} · {where} · "
               f"{counts}")
        b_pic = gr.Image(value=pics[1] if len(pics) > 1 else None, visible=len(pics) > 1,
                         label=f"B: {es.runs[1].name}" if len(pics) > 1 else "B")
        return (b, gr.Image(value=pics[0], label=f"A: {es.runs[0].name}"), b_pic,
                [[d["run"], d["kind"], d["class"], d["state"], d["error"], d["score"], d["iou"],
                  str(d["box"])] for d in details], pos, *_status(b))

    def all_outputs(b: Browse, with_classes: bool, keep_place: bool = False) -> tuple:
        """`all_out`'s values. The image list is selected again from the filters (and the
        browser goes to its first image) unless ``keep_place``."""
        es = store.get(b.key)
        order, counts = _select(es, b)
        if not keep_place:
            b.order, b.pos = order, 0
        head, rows = es_mod.class_table(es, b.score, b.iou)
        ihead, irows = _image_rows(es, b.order, counts)
        shown = (f"{b.order.size} images match at IoU {b.iou:.2f}" + (
            f" (the first {MAX_ROWS} listed; Next/Previous walk them all)"
            if b.order.size > MAX_ROWS else "") + ", costliest (FP + FN) first.")
        cls = gr.Dropdown(choices=[ALL, *es.cat_names], value=ALL) if with_classes else gr.Dropdown()
        v = view_outputs(b)
        return (v[0], es_mod.summary_markdown(es, b.score, b.iou), gr.Dataframe(value=rows, headers=head),
                es_mod.pr_figure(es, b.cat, b.iou), gr.Dataframe(value=irows, headers=ihead), shown,
                cls, *v[1:])

    def blank_view(b: Browse) -> tuple:
        return (b, None, gr.Image(value=None), [], "", *_status(b))

    def blank_all(b: Browse) -> tuple:
        v = blank_view(b)
        return (v[0], NOTHING_LOADED, gr.Dataframe(value=None), None, gr.Dataframe(value=None), "",
                gr.Dropdown(), *v[1:])

    def redraw(full: bool) -> Callable:
        """The ``.failure`` follow-up: the same outputs again from the view as it was before
        the failing action (nothing moves), with the error in its status line; after a
        refused filter or upload (``full``) the filter controls go back to the view's values
        too."""
        def on_failed(b: Browse) -> tuple:
            if b.key is None:
                return (*blank_all(b), *[gr.skip()] * 3) if full else blank_view(b)
            try:
                if not full:
                    return view_outputs(b)
                out = list(all_outputs(b, False, keep_place=True))
                es = store.get(b.key)
                out[6] = gr.Dropdown(choices=[ALL, *es.cat_names],
                                     value=ALL if b.cat is None else es.cat_names[b.cat])
                return (*out, b.error, b.score, b.iou)
            except DetsegError as exc:  # e.g. the evaluation was dropped to save memory
                b.message, b.area = str(exc), b.area or "browse"
                return (*blank_all(b), *[gr.skip()] * 3) if full else blank_view(b)
        return on_failed

    # ---- handlers -------------------------------------------------------------------
    def _check_error(error: str) -> str:
        if error not in ERRORS:
            raise InputError(f"error type: expected one of {', '.join(ERRORS)}, found {error!r}")
        return error

    @_errors_to_page("load")
    def on_load(b: Browse, gt_file: str | None, a_file: str | None, b_file: str | None,
                iou_type: str, error: str = "any", score: float = 0.3, iou: float = 0.5):
        """Evaluate the uploaded results file(s) against the uploaded ground truth; the error
        type, score and IoU threshold filters apply at once (the class filter starts at all
        classes)."""
        if not gt_file or not a_file:
            raise InputError("upload a ground-truth JSON and at least results file A")
        _check_error(error)
        score = browse.check_score(score)
        preds = [a_file] + ([b_file] if b_file else [])
        es = es_mod.load_evalset(gt_file, preds, iou_type or "bbox")
        iou = es.check_iou(iou)
        new = Browse(key=store.add(es), error=error, score=float(score), iou=iou)
        return all_outputs(new, with_classes=True)

    @_errors_to_page("browse")
    def on_filter(b: Browse, cls: str, error: str, score: float, iou: float = 0.5):
        """Apply filters: class name (or 'all classes'), error type, score threshold, IoU
        threshold (one of the evaluation's: 0.5, 0.55, ..., 0.95)."""
        es = store.get(b.key)
        # every value is checked before the view changes: a refused one leaves it as it was
        cat, error, score, iou = (_cat_index(es, cls), _check_error(error),
                                  browse.check_score(score), es.check_iou(iou))
        b.cat, b.error, b.score, b.iou = cat, error, score, iou
        return all_outputs(b, with_classes=False)

    def step(delta: int):
        @_errors_to_page("browse")
        def on_step(b: Browse):
            store.get(b.key)
            if b.order.size:
                b.pos = (b.pos + delta) % b.order.size
            return view_outputs(b)
        return on_step

    @_errors_to_page("browse")
    def on_show(b: Browse, image_id: float):
        """Show the image with this COCO id (moves to it in the list, or adds it in front)."""
        es = store.get(b.key)
        hit = np.flatnonzero(es.gt.image_ids == int(image_id)) if image_id is not None else []
        if not len(hit):
            raise InputError(f"image id: {image_id} is not in {es.gt.source}")
        where = np.flatnonzero(b.order == hit[0])
        if where.size:
            b.pos = int(where[0])
        else:
            b.order, b.pos = np.r_[hit[0], b.order], 0
        return view_outputs(b)

    @_errors_to_page("browse")
    def on_row(b: Browse, evt: gr.SelectData):
        if evt.index is None or b.key is None:
            return view_outputs(b) if b.key else blank_view(b)
        b.pos = min(int(evt.index[0]), max(b.order.size - 1, 0))
        return view_outputs(b)

    def on_open(b: Browse):
        """A new page: fill the tab from the evaluation given on the command line."""
        return all_outputs(b, with_classes=False) if b.key else (b, *[gr.skip()] * 12)

    # ---- layout ---------------------------------------------------------------------
    cat_names = preloaded.cat_names if preloaded is not None else []
    two = preloaded is not None and len(preloaded.runs) > 1
    with gr.Tab("Evaluate", id=TAB_ID):
        state = gr.State(Browse(key="cli") if preloaded is not None else Browse(),
                         time_to_live=session_ttl_s)
        with gr.Accordion("Evaluate results files", open=preloaded is None):
            with gr.Row():
                gt_in = gr.File(label="Ground truth (COCO instances JSON)", file_types=[".json"],
                                type="filepath", elem_id="eval-gt")
                a_in = gr.File(label="Results A (COCO results JSON)", file_types=[".json"],
                               type="filepath", elem_id="eval-a")
                b_in = gr.File(label="Results B (optional, to compare)", file_types=[".json"],
                               type="filepath", elem_id="eval-b")
            with gr.Row():
                iou_type = gr.Radio(["bbox", "segm"], value="bbox", label="IoU type")
                load_btn = gr.Button("Evaluate", variant="primary", elem_id="eval-load")
            load_status = gr.Markdown("", elem_id="eval-load-status")
        with gr.Row():
            with gr.Column(scale=3):
                summary = gr.Markdown(NOTHING_LOADED, elem_id="eval-summary")
            with gr.Column(scale=2):
                pr = gr.Image(label="PR curve of the selected class", show_label=False,
                              interactive=False, elem_id="eval-pr", type="numpy")
        with gr.Row():
            cls = gr.Dropdown([ALL, *cat_names], value=ALL, label="Class", elem_id="eval-class")
            error = gr.Dropdown(ERRORS, value="any", label="Error type", elem_id="eval-error")
            score = gr.Slider(0.0, 1.0, Browse().score, step=0.01, label="Score threshold",
                              elem_id="eval-score")
            iou = gr.Slider(0.5, 0.95, Browse().iou, step=0.05, label="IoU threshold (a match)",
                            elem_id="eval-iou")
        with gr.Row():
            prev_btn = gr.Button("◀ Previous", elem_id="eval-prev")
            next_btn = gr.Button("Next ▶", elem_id="eval-next")
            show_id = gr.Number(label="Image id", precision=0, elem_id="eval-id")
            show_btn = gr.Button("Show image id", elem_id="eval-show")
        status = gr.Markdown("", elem_id="eval-status")
        position = gr.Markdown("", elem_id="eval-position")
        with gr.Row():
            view_a = gr.Image(label="A", interactive=False, format="jpeg", elem_id="eval-view-a",
                              type="numpy")
            view_b = gr.Image(label="B", interactive=False, format="jpeg", elem_id="eval-view-b",
                              visible=two, type="numpy")
        gr.Markdown(es_mod.LEGEND)
        details = gr.Dataframe(headers=["run", "kind", "class", "state", "error", "score", "iou",
                                        "box xyxy"], interactive=False, label="Objects in this image",
                               elem_id="eval-objects", max_height=320)
        list_note = gr.Markdown("", elem_id="eval-list-note")
        images = gr.Dataframe(interactive=False, label="Images (click a row to show it)",
                              elem_id="eval-images", max_height=320)
        class_table = gr.Dataframe(interactive=False, label="Per class (most ground truth first)",
                                   elem_id="eval-classes", max_height=480)

    view_out = [state, view_a, view_b, details, position, load_status, status]
    all_out = [state, summary, class_table, pr, images, list_note, cls, view_a, view_b, details,
               position, load_status, status]

    def api(event, fn, inputs, outputs, name: str | None, **kw):
        ev = event(fn, inputs, outputs, api_name=name, concurrency_limit=concurrency_limit,
                   concurrency_id="evaluate", api_visibility="public" if name else "private", **kw)
        # a failing action redraws what it would have drawn, so no "Error" marker stays on
        # the outputs, and says why in the tab's status line
        full = outputs is all_out
        ev.failure(redraw(full), [state], outputs + ([error, score, iou] if full else []),
                   api_visibility="private", concurrency_limit=concurrency_limit,
                   concurrency_id="evaluate")
        return ev

    api(load_btn.click, on_load, [state, gt_in, a_in, b_in, iou_type, error, score, iou], all_out,
        "eval_load")
    filt = [state, cls, error, score, iou]
    api(cls.input, on_filter, filt, all_out, "eval_filter")
    api(error.input, on_filter, filt, all_out, None)
    api(score.release, on_filter, filt, all_out, None)
    api(iou.release, on_filter, filt, all_out, None)
    api(next_btn.click, step(1), [state], view_out, "eval_next")
    api(prev_btn.click, step(-1), [state], view_out, "eval_prev")
    api(show_btn.click, on_show, [state, show_id], view_out, "eval_show")
    api(images.select, on_row, [state], view_out, None)
    if preloaded is not None:
        demo.load(on_open, [state], all_out, api_visibility="private",
                  concurrency_limit=concurrency_limit, concurrency_id="evaluate")
