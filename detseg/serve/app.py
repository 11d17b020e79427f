"""The Gradio page of `detseg serve`: layout and wiring only; the work is in `handlers`.

Every action is a named API endpoint (``api_name``), so scripts can drive the same session
with gradio_client the way the page does::

    from gradio_client import Client, handle_file
    c = Client("http://127.0.0.1:7860/")
    c.predict(handle_file("cat.jpg"), api_name="/load_image")
    c.predict("builtin", 0.25, 0.45, 100, api_name="/detect")
    c.predict(120, 80, "positive", True, False, api_name="/sam_point")

State lives in a ``gr.State`` per browser tab / client session (the image, its SAM embedding,
detections, prompts); the models are shared and hold no user data.

The page is built by one function per part (`image_panel`, `sam_tab`, `detect_tab`), each
returning a dataclass of its components, then wired (`wire_*`). A new tab or action is one
call inside `build_app`, given the `Page` (e.g. ``add_my_tab(page)`` inside ``gr.Tabs``).

Errors: a handler that fails records the message in the session and raises ``gr.Error``
(a toast in the page, an exception for API clients); a ``.failure`` follow-up then redraws
the same outputs from the session, so the status lines say what went wrong and no red
"Error" marker stays on a component.
"""

from __future__ import annotations

import functools
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Gradio phones home for analytics and version checks unless told not to; the demo is offline.
import gradio as gr

from detseg.errors import DetsegError
from detseg.serve import evaluate as eval_tab
from detseg.serve import everything, everything_ui
from detseg.serve import handlers as h
from detseg.serve.render import detections_view, sam_view, view_scale
from detseg.serve.state import Session

logger = logging.getLogger(__name__)

CLICK_MODES = ["positive point", "negative point", "box (two clicks)"]
API_NAMES = (
    "load_image", "detect", "detections_to_sam", "sam_point", "sam_box", "sam_undo",
    "sam_clear", "sam_choose", "sam_export", "refine_detection",
) + everything_ui.API_NAMES + eval_tab.API_NAMES
# Concurrency groups: encoder/detector runs take all cores for ~0.1-1 s; prompt-decoder
# clicks take milliseconds and must not queue behind them.
HEAVY, CLICKS = "models", "clicks"
ERROR_TOAST_S = 8.0

CSS = """
#sam-row { flex-wrap: nowrap !important; gap: 8px; }
#sam-tools { min-width: 118px !important; }
#sam-canvas-col { min-width: 0 !important; }
#sam-status, #status, #det-status { min-height: 1.5em; }
.detseg-note { font-size: 0.9em; opacity: 0.85; }
"""


@dataclass(frozen=True)
class ServeOptions:
    """How the page behaves under load.

    Attributes:
        concurrency_limit: uploads / detector runs at once (they use every core already, so a
            small number keeps latency predictable).
        click_concurrency: SAM prompt-decoder events at once (each session has its own
            embedding, so clicks of different users run side by side).
        max_queue: requests waiting at most; beyond it users get "queue full".
        view_max_side: images are shown at most this many pixels wide/high.
        view_min_side: smaller images are shown enlarged to this many pixels (longest side).
        session_ttl_s: a session's state is dropped this long after its last use.
        samples: offer synthetic shapes images to try the embedded models on.
        examples: photos offered as samples too (``detseg serve --examples DIR``).
        max_sessions: sessions whose state is kept; beyond it the oldest is dropped. With
            the pixel limit this bounds the memory that user images can take.
    """

    concurrency_limit: int = 2
    click_concurrency: int = 8
    max_queue: int = 64
    view_max_side: int = 1024
    view_min_side: int = 640
    session_ttl_s: int = 3600
    samples: bool = True
    examples: tuple[Path, ...] = ()
    max_sessions: int = 200


def _user_errors(area: str) -> Callable[[Callable], Callable]:
    """Turn detseg's errors into a message in the page (gr.Error), never a crash.

    The message is also kept in the session (first argument) under ``area`` so that the
    ``.failure`` redraw shows it in that area's status line; a success clears it.
    """

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(session: Session, *args: Any, **kwargs: Any) -> Any:
            session.error, session.error_area = "", ""
            try:
                return fn(session, *args, **kwargs)
            except DetsegError as exc:
                session.error, session.error_area = str(exc), area
                raise gr.Error(str(exc), duration=ERROR_TOAST_S, print_exception=False) from None

        return wrapper

    return decorate


# ---- layout -------------------------------------------------------------------------------
@dataclass
class ImagePanel:
    image_in: gr.Image
    status: gr.Markdown
    samples: gr.Dataset | None
    sample_paths: list[Path]


@dataclass
class SamTab:
    mode: gr.Radio
    multimask: gr.Checkbox
    refine: gr.Checkbox
    candidates: gr.Radio
    undo_btn: gr.Button
    clear_btn: gr.Button
    px: gr.Number
    py: gr.Number
    plabel: gr.Radio
    point_btn: gr.Button
    box: list[gr.Number]
    box_btn: gr.Button
    export_btn: gr.Button
    mask_files: gr.File
    choose_idx: gr.Number
    choose_btn: gr.Button
    canvas: gr.Image
    sam_status: gr.Markdown
    summary: gr.JSON
    tools: gr.Column  # extra SAM actions go here (e.g. "Segment everything")


@dataclass
class DetectTab:
    model: gr.Dropdown
    model_info: gr.Markdown
    conf: gr.Slider
    iou: gr.Slider
    max_det: gr.Number
    detect_btn: gr.Button
    to_sam_btn: gr.Button
    det_status: gr.Markdown
    det_image: gr.Image
    det_table: gr.Dataframe
    pick: gr.Number
    refine_btn: gr.Button
    det_file: gr.File


@dataclass
class Page:
    """Everything a part of the page needs to add itself: context, options, components and
    the output renderers (``sam_outputs(session)`` returns the values for ``sam_out``)."""

    ctx: h.ServeContext
    options: ServeOptions
    state: gr.State
    tabs: gr.Tabs
    image: ImagePanel
    sam: SamTab
    det: DetectTab
    renderers: dict[str, Callable] = field(default_factory=dict)

    @property
    def sam_out(self) -> list:
        s = self.sam
        return [self.state, s.canvas, s.candidates, s.summary, s.sam_status]

    @property
    def det_out(self) -> list:
        d = self.det
        return [self.state, d.det_image, d.det_table, d.det_file, d.det_status]

    @property
    def det_in(self) -> list:
        d = self.det
        return [self.state, d.model, d.conf, d.iou, d.max_det]

    def event(self, trigger, fn, inputs, outputs, name: str | None = None, *, group: str = HEAVY, **kw):
        """Register ``fn`` on ``trigger`` in a concurrency group; public API when ``name``."""
        limit = self.options.concurrency_limit if group == HEAVY else self.options.click_concurrency
        return trigger(
            fn, inputs, outputs, api_name=name, concurrency_limit=limit, concurrency_id=group,
            api_visibility="public" if name else "private", **kw,
        )


def image_panel(ctx: h.ServeContext, options: ServeOptions) -> ImagePanel:
    paths = h.write_samples(ctx.out_dir / "samples") if options.samples else []
    labels = [f"shapes {i + 1}" for i in range(len(paths))]
    for folder in options.examples:
        photos = h.example_images(folder)
        paths += photos
        labels += [p.stem for p in photos]
    with gr.Row(equal_height=False):
        image_in = gr.Image(
            label="Image", type="filepath", sources=["upload", "clipboard"], height=260,
            elem_id="image-in", scale=1, min_width=160,
        )
        with gr.Column(scale=2, min_width=200):
            status = gr.Markdown("No image loaded: upload one or pick a sample.", elem_id="status")
            samples = None
            if paths:
                samples = gr.Dataset(
                    components=[gr.Image(type="filepath", visible=False)],
                    samples=[[str(p)] for p in paths], sample_labels=labels, type="index",
                    label="Samples (synthetic shapes" + (", photos)" if options.examples else ")"),
                    elem_id="samples", samples_per_page=24, layout="gallery",
                )
    return ImagePanel(image_in, status, samples, paths)


def sam_tab(ctx: h.ServeContext) -> SamTab:
    with gr.Row(elem_id="sam-row", equal_height=False):
        with gr.Column(scale=1, min_width=118, elem_id="sam-tools") as tools:
            mode = gr.Radio(CLICK_MODES, value=CLICK_MODES[0], label="A click adds", elem_id="click-mode")
            multimask = gr.Checkbox(True, label="3 candidate masks")
            refine = gr.Checkbox(False, label="Refine the previous mask")
            candidates = gr.Radio([], label="Candidate masks", elem_id="candidates")
            with gr.Row():
                undo_btn = gr.Button("Undo", size="sm", min_width=50)
                clear_btn = gr.Button("Clear", size="sm", min_width=50)
            export_btn = gr.Button("Download mask", size="sm")
            mask_files = gr.File(label="Mask files (PNG, COCO RLE)", file_count="multiple",
                                 visible=False)
            with gr.Accordion("Type a point or a box", open=False):
                with gr.Row():
                    px = gr.Number(label="x", precision=1, min_width=60)
                    py = gr.Number(label="y", precision=1, min_width=60)
                plabel = gr.Radio(["positive", "negative"], value="positive", label="label")
                point_btn = gr.Button("Add point", size="sm")
                with gr.Row():
                    box = [gr.Number(label=n, precision=1, min_width=60) for n in ("x1", "y1", "x2", "y2")]
                box_btn = gr.Button("Set box", size="sm")
            choose_idx = gr.Number(visible=False, precision=0)
            choose_btn = gr.Button(visible=False)
        with gr.Column(scale=3, min_width=0, elem_id="sam-canvas-col"):
            canvas = gr.Image(
                label="Click on an object", interactive=False, format="jpeg", elem_id="sam-canvas",
                show_label=True, buttons=["download", "fullscreen"],
            )
            sam_status = gr.Markdown("Upload an image, then click on an object.", elem_id="sam-status")
            gr.Markdown(ctx.hub.describe_sam(), elem_id="sam-info", elem_classes="detseg-note")
            with gr.Accordion("Details (JSON)", open=False, elem_id="sam-details"):
                summary = gr.JSON(label="Prompts and scores", elem_id="sam-summary")
    return SamTab(
        mode, multimask, refine, candidates, undo_btn, clear_btn, px, py, plabel, point_btn,
        box, box_btn, export_btn, mask_files, choose_idx, choose_btn, canvas, sam_status,
        summary, tools,
    )


def detect_tab(ctx: h.ServeContext) -> DetectTab:
    hub = ctx.hub
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=160):
            model = gr.Dropdown(hub.names, value=hub.default_name, label="Model", elem_id="model")
            model_info = gr.Markdown(
                hub.describe_detector(hub.default_name), elem_id="model-info",
                elem_classes="detseg-note",
            )
            conf = gr.Slider(0.0, 1.0, 0.25, step=0.01, label="Confidence threshold")
            iou = gr.Slider(0.0, 1.0, 0.45, step=0.01, label="IoU threshold (NMS)")
            max_det = gr.Number(100, label="Max detections", precision=0, minimum=1)
            detect_btn = gr.Button("Detect", variant="primary")
            to_sam_btn = gr.Button("Segment every detection with SAM")
        with gr.Column(scale=3, min_width=200):
            det_status = gr.Markdown("No image loaded.", elem_id="det-status")
            det_image = gr.Image(
                label="Detections", interactive=False, format="jpeg", elem_id="det-image"
            )
    det_table = gr.Dataframe(
        headers=h.TABLE_HEADERS, interactive=False, label="Detections (select a row)",
        elem_id="det-table",
    )
    with gr.Row():
        pick = gr.Number(label="Row #", precision=0, minimum=0, elem_id="det-pick", min_width=80, scale=0)
        refine_btn = gr.Button("Refine in Segment Anything", elem_id="refine-btn", scale=1)
    det_file = gr.File(label="COCO results JSON", elem_id="det-file")
    return DetectTab(
        model, model_info, conf, iou, max_det, detect_btn, to_sam_btn, det_status, det_image,
        det_table, pick, refine_btn, det_file,
    )


# ---- the app ------------------------------------------------------------------------------
def build_app(ctx: h.ServeContext, options: ServeOptions = ServeOptions(), evalset=None) -> gr.Blocks:
    """The demo page, wired to ``ctx``'s models; call ``.queue()``/``.launch()`` via `launch`.

    ``evalset``: a `detseg.serve.evalset.EvalSet` the Evaluate tab opens on (``--gt/--pred``).
    """
    # analytics_enabled=False: Gradio otherwise phones home for analytics and a version check;
    # the demo is offline (set per app, not through os.environ, which is the caller's).
    with gr.Blocks(title="detseg demo", delete_cache=(300, 900), analytics_enabled=False) as demo:
        state = gr.State(Session(), time_to_live=options.session_ttl_s, delete_callback=ctx.forget)
        gr.Markdown(
            "## detseg: detection, instance segmentation and Segment Anything\n"
            f"Upload an image (at most {ctx.limits.describe()}) or pick a sample, then click "
            "on an object or detect objects."
        )
        panel = image_panel(ctx, options)
        with gr.Tabs(selected=eval_tab.TAB_ID if evalset is not None else None) as tabs:
            with gr.Tab("Segment Anything", id="sam"):
                sam = sam_tab(ctx)
            with gr.Tab("Detect & segment", id="detect"):
                det = detect_tab(ctx)
            eval_tab.build_tab(demo, evalset, options.concurrency_limit, options.session_ttl_s)
        page = Page(ctx, options, state, tabs, panel, sam, det)
        wire_image(page)
        wire_sam(page)
        everything_ui.add(page, _user_errors, sam_outputs, CLICKS)
        wire_detect(page)
    return demo


# ---- output renderers ----------------------------------------------------------------------
def sam_outputs(page: Page, session: Session) -> tuple:
    """Values for `Page.sam_out`: canvas, candidates, JSON details, status line."""
    opts = page.options
    canvas = None
    if everything.showing(session):
        canvas = everything.everything_view(session.image, session.everything,
                                            opts.view_max_side, opts.view_min_side)
    elif session.image is not None:
        chosen = h.chosen_mask(session)
        canvas = sam_view(
            session.image, chosen[0] if chosen else None, session.prompt,
            session.pending_corner, opts.view_max_side, opts.view_min_side,
        )
    choices: list[tuple[str, int]] = []
    value = None
    if session.result is not None:
        choices = [(f"#{i + 1}  IoU {s:.2f}", i) for i, s in enumerate(session.result.scores)]
        value = session.steps[-1].choice
    return (session, canvas, gr.Radio(choices=choices, value=value), everything.summary(session),
            everything.status(session) or h.sam_status(session))


def det_outputs(page: Page, session: Session, dets, suffix: str = "", what: str = "") -> tuple:
    """Values for `Page.det_out`: drawn image, table, COCO JSON file, status line."""
    if session.image is None or dets is None:
        return session, None, [], None, h.detect_status(session, None)
    path = h.write_coco(page.ctx, session, dets, suffix)
    view = detections_view(session.image, dets, page.options.view_max_side, page.options.view_min_side)
    return session, view, h.detection_rows(dets), str(path), h.detect_status(session, dets, what)


def image_status(page: Page, session: Session) -> str:
    return h.image_status(session, page.ctx.hub.sam_status() if session.image is not None else None)


# ---- wiring -------------------------------------------------------------------------------
def wire_image(page: Page) -> None:
    """Upload / sample / remove: one /load_image per upload (``.upload``, never ``.change``,
    which also fires when the app sets the image box), then detection on the new image."""
    ctx, panel = page.ctx, page.image
    load_out = [*page.sam_out, *page.det_out[1:], panel.status]

    def loaded(session: Session) -> tuple:
        return (*sam_outputs(page, session), *det_outputs(page, session, None)[1:],
                image_status(page, session))

    @_user_errors("image")
    def on_upload(session: Session, image: dict | None):
        """Load an image into this session (and compute its SAM embedding); None clears it.

        ``image`` is Gradio's raw upload record (``path``, ``orig_name``), not decoded yet.
        """
        if not image:
            session.clear_image()
            return loaded(session)
        if not image.get("path"):
            raise h.InputError("no image received: upload a JPEG, PNG, WebP, BMP or TIFF file")
        name = image.get("orig_name") or Path(image["path"]).name
        h.load_image(ctx, session, image["path"], name)
        return loaded(session)

    @_user_errors("image")
    def on_sample(session: Session, index: int):
        path = panel.sample_paths[int(index)]
        h.load_image(ctx, session, path, path.name)
        return (str(path), *loaded(session))

    def on_remove(session: Session):
        if session.image is not None:
            session.clear_image()
            session.error = ""
        return loaded(session)

    def on_failed(session: Session):
        # the refused file is not shown: image box, status, canvas and detections all say
        # "no image" (the session has none), with the reason in the status line
        return (None, *loaded(session))

    def detect_quiet(session: Session, model: str, conf: float, iou: float, max_det: float):
        if session.image is None:
            return det_outputs(page, session, None)
        try:
            return run_detect(page, session, model, conf, iou, max_det)
        except gr.Error:
            return det_outputs(page, session, None)

    # preprocess=False: the handler gets the raw upload and decodes it itself, so a
    # non-image or corrupt file becomes a clear message instead of PIL's traceback.
    up = page.event(panel.image_in.upload, on_upload, [page.state, panel.image_in], load_out,
                    "load_image", preprocess=False, show_progress_on=[page.sam.canvas])
    page.event(up.success, detect_quiet, page.det_in, page.det_out)
    page.event(up.failure, on_failed, [page.state], [panel.image_in, *load_out], group=CLICKS)
    page.event(panel.image_in.clear, on_remove, [page.state], load_out, group=CLICKS)
    if panel.samples is not None:
        ev = page.event(panel.samples.click, on_sample, [page.state, panel.samples],
                        [panel.image_in, *load_out], show_progress_on=[page.sam.canvas])
        page.event(ev.success, detect_quiet, page.det_in, page.det_out)
        page.event(ev.failure, on_failed, [page.state], [panel.image_in, *load_out], group=CLICKS)


def wire_sam(page: Page) -> None:
    ctx, sam, opts = page.ctx, page.sam, page.options
    out = page.sam_out

    def render(session: Session):
        return sam_outputs(page, session)

    @_user_errors("sam")
    def on_click(session: Session, mode: str, multimask: bool, refine: bool, evt: gr.SelectData):
        if session.image is None:
            raise h.InputError("upload an image first, then click on an object")
        s = view_scale(session.image.shape, opts.view_max_side, opts.view_min_side)
        h_, w_ = session.image.shape[:2]
        x, y = (min(float(v) / s, lim - 0.5) for v, lim in zip(evt.index[:2], (w_, h_), strict=True))
        if mode == CLICK_MODES[2]:
            h.sam_corner(ctx, session, x, y, multimask, refine)
        else:
            h.sam_point(ctx, session, x, y, mode == CLICK_MODES[0], multimask, refine)
        return render(session)

    @_user_errors("sam")
    def on_point(session: Session, x: float, y: float, label: str, multimask: bool, refine: bool):
        """Add a click at pixel (x, y) of the original image; label 'positive' or 'negative'."""
        if label not in ("positive", "negative"):
            raise h.InputError(f"label: expected 'positive' or 'negative', found {label!r}")
        h.sam_point(ctx, session, x, y, label == "positive", multimask, refine)
        return render(session)

    @_user_errors("sam")
    def on_box(session, x1: float, y1: float, x2: float, y2: float, multimask: bool, refine: bool):
        """Set the box prompt x1, y1, x2, y2 (pixels of the original image)."""
        h.sam_box(ctx, session, (x1, y1, x2, y2), multimask, refine)
        return render(session)

    @_user_errors("sam")
    def on_undo(session: Session):
        """Undo the last prompt."""
        h.sam_undo(ctx, session)
        return render(session)

    @_user_errors("sam")
    def on_clear(session: Session):
        """Remove every prompt and the mask."""
        h.sam_clear(session)
        return render(session)

    @_user_errors("sam")
    def on_choose(session: Session, index: float):
        """Show candidate mask ``index`` (0-based) of the current result."""
        h.sam_choose(session, int(index) if index is not None else None)
        return render(session)

    @_user_errors("sam")
    def on_export(session: Session):
        """The shown mask as a PNG and as COCO RLE JSON."""
        png, rle = h.sam_export(ctx, session)
        return [str(png), str(rle)]

    def on_mode(session: Session, mode: str):
        # say what a click does now; a half-drawn box is dropped when leaving box mode
        if mode != CLICK_MODES[2]:
            session.pending_corner = None
        return (*render(session)[:-1], h.sam_status(session) if not (
            mode == CLICK_MODES[2] and session.pending_corner is None and session.image is not None
        ) else "**Box mode: click one corner of the box**, then the opposite corner.")

    def failed(event) -> None:
        page.event(event.failure, render, [page.state], out, group=CLICKS)

    inputs = [page.state, sam.mode, sam.multimask, sam.refine]
    failed(page.event(sam.canvas.select, on_click, inputs, out, group=CLICKS))
    failed(page.event(sam.point_btn.click, on_point,
                      [page.state, sam.px, sam.py, sam.plabel, sam.multimask, sam.refine], out,
                      "sam_point", group=CLICKS))
    failed(page.event(sam.box_btn.click, on_box, [page.state, *sam.box, sam.multimask, sam.refine],
                      out, "sam_box", group=CLICKS))
    failed(page.event(sam.undo_btn.click, on_undo, [page.state], out, "sam_undo", group=CLICKS))
    failed(page.event(sam.clear_btn.click, on_clear, [page.state], out, "sam_clear", group=CLICKS))
    failed(page.event(sam.candidates.input, on_choose, [page.state, sam.candidates], out, group=CLICKS))
    failed(page.event(sam.choose_btn.click, on_choose, [page.state, sam.choose_idx], out,
                      "sam_choose", group=CLICKS))
    page.event(sam.mode.change, on_mode, [page.state, sam.mode], out, group=CLICKS)
    ev = page.event(sam.export_btn.click, on_export, [page.state], [sam.mask_files], "sam_export",
                    group=CLICKS)
    ev.success(lambda: gr.File(visible=True), None, [sam.mask_files], api_visibility="private",
               queue=False)
    page.event(ev.failure, lambda s: (gr.File(None, visible=False), *render(s)), [page.state],
               [sam.mask_files, *out],
               group=CLICKS)


def run_detect(page: Page, session: Session, model: str, conf: float, iou: float, max_det: float):
    """Run the chosen detector; returns the `Page.det_out` values."""
    dets = _detect(session, page.ctx, model, conf, iou, max_det)
    return det_outputs(page, session, dets, "detections")


@_user_errors("detect")
def _detect(session: Session, ctx: h.ServeContext, model, conf, iou, max_det):
    return h.detect(ctx, session, model, conf, iou, int(max_det or 100))


def wire_detect(page: Page) -> None:
    ctx, det = page.ctx, page.det

    def on_detect(session: Session, model: str, conf: float, iou: float, max_det: float):
        """Run the chosen detector; returns the drawn image, the table, a COCO JSON file and
        a status line."""
        return run_detect(page, session, model, conf, iou, max_det)

    def on_detect_quiet(session: Session, model: str, conf: float, iou: float, max_det: float):
        if session.image is None:  # no image (cleared, or sliders moved before an upload)
            return det_outputs(page, session, None)
        return on_detect(session, model, conf, iou, max_det)

    @_user_errors("detect")
    def on_detections_to_sam(session: Session):
        """A SAM mask for every detected box; returns the drawn image, table, COCO JSON and
        status line."""
        dets = h.detections_to_sam(ctx, session)
        return det_outputs(page, session, dets, "sam_detections", " (masks by Segment Anything)")

    @_user_errors("sam")
    def on_refine(session: Session, index: float):
        """Start a SAM prompt from detection row ``index``'s box and show it in the SAM tab."""
        h.detection_to_prompt(ctx, session, int(index) if index is not None else None)
        return (*sam_outputs(page, session), gr.Tabs(selected="sam"))

    def on_row(evt: gr.SelectData):
        return int(evt.index[0])

    def render(session: Session):
        return det_outputs(page, session, session.detections)

    def failed(event) -> None:
        page.event(event.failure, render, [page.state], page.det_out, group=CLICKS)

    failed(page.event(det.detect_btn.click, on_detect, page.det_in, page.det_out, "detect"))
    for trigger in (det.conf.release, det.iou.release, det.model.input):
        failed(page.event(trigger, on_detect_quiet, page.det_in, page.det_out))
    page.event(det.model.change, ctx.hub.describe_detector, [det.model], [det.model_info])
    failed(page.event(det.to_sam_btn.click, on_detections_to_sam, [page.state], page.det_out,
                      "detections_to_sam"))
    page.event(det.det_table.select, on_row, None, [det.pick], group=CLICKS)
    ev = page.event(det.refine_btn.click, on_refine, [page.state, det.pick],
                    [*page.sam_out, page.tabs], "refine_detection", group=CLICKS)
    page.event(ev.failure, lambda s: (*sam_outputs(page, s), gr.Tabs()), [page.state],
               [*page.sam_out, page.tabs], group=CLICKS)


def make_context(hub: h.ModelHub, limits: h.Limits, out_dir: Path | None = None) -> h.ServeContext:
    """A `ServeContext` with a fresh temporary download folder unless ``out_dir`` is given."""
    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="detseg-serve-"))
    out.mkdir(parents=True, exist_ok=True)
    return h.ServeContext(hub=hub, limits=limits, out_dir=out)


def launch(
    demo: gr.Blocks,
    ctx: h.ServeContext,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    share: bool = False,
    auth: tuple[str, str] | None = None,
    options: ServeOptions = ServeOptions(),
    block: bool = True,
    quiet: bool = False,
) -> str:
    """Queue and start the server; returns the local URL (blocks unless ``block=False``)."""
    demo.queue(max_size=options.max_queue, default_concurrency_limit=options.concurrency_limit)
    _, url, share_url = demo.launch(
        server_name=host,
        css=CSS,
        server_port=port,
        share=share,
        auth=auth,
        max_file_size=ctx.limits.max_upload_bytes,
        prevent_thread_lock=True,
        quiet=quiet,
        ssr_mode=False,
        show_error=True,
        footer_links=["api"],
        run_history=False,
        enable_monitoring=False,
        allowed_paths=[str(ctx.out_dir), *(str(Path(p).resolve()) for p in options.examples)],
        state_session_capacity=options.max_sessions,
    )
    if share_url:
        logger.warning("public link: %s", share_url)
    if block:
        try:
            demo.block_thread()
        finally:
            demo.close()
    return url
