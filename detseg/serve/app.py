"""The Gradio page of `detseg serve`: layout and wiring only; the work is in `handlers`.

Every action is a named API endpoint (``api_name``), so scripts can drive the same session
with gradio_client the way the page does::

    from gradio_client import Client, handle_file
    c = Client("http://127.0.0.1:7860/")
    c.predict(handle_file("cat.jpg"), api_name="/load_image")
    c.predict("builtin", 0.25, 0.45, 100, api_name="/detect")
    c.predict(120, 80, "positive", True, False, api_name="/sam_point")

State lives in a ``gr.State`` per browser tab / client session; the models are shared.
"""

from __future__ import annotations

import functools
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from detseg.errors import DetsegError
from detseg.serve import evaluate as eval_tab
from detseg.serve import handlers as h
from detseg.serve.render import detections_view, sam_view, view_scale
from detseg.serve.state import Session

logger = logging.getLogger(__name__)

CLICK_MODES = ["positive point", "negative point", "box (two clicks)"]
API_NAMES = (
    "load_image", "detect", "detections_to_sam", "sam_point", "sam_box", "sam_undo",
    "sam_clear", "sam_choose", "sam_export",
) + eval_tab.API_NAMES


@dataclass(frozen=True)
class ServeOptions:
    """How the page behaves under load.

    Attributes:
        concurrency_limit: events of one kind running at once (the models use every core
            already, so a small number keeps latency predictable).
        max_queue: requests waiting at most; beyond it users get "queue full".
        view_max_side: the SAM canvas is shown at most this many pixels wide/high.
        session_ttl_s: a session's state is dropped this long after its last use.
        samples: offer synthetic shapes images to try the embedded models on.
        max_sessions: sessions whose state is kept; beyond it the oldest is dropped. With
            the pixel limit this bounds the memory that user images can take.
    """

    concurrency_limit: int = 2
    max_queue: int = 64
    view_max_side: int = 1024
    session_ttl_s: int = 3600
    samples: bool = True
    max_sessions: int = 200


def _user_errors(fn: Callable) -> Callable:
    """Turn detseg's errors into a message in the page (gr.Error), never a crash."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DetsegError as exc:
            raise gr.Error(str(exc), print_exception=False) from None

    return wrapper


def build_app(ctx: h.ServeContext, options: ServeOptions = ServeOptions(), evalset=None) -> gr.Blocks:
    """The demo page, wired to ``ctx``'s models; call ``.queue()``/``.launch()`` via `launch`.

    ``evalset``: a `detseg.serve.evalset.EvalSet` the Evaluate tab opens on (``--gt/--pred``).
    """
    hub = ctx.hub

    # ---- output builders (shared by every SAM action) --------------------------------
    def sam_outputs(session: Session) -> tuple:
        canvas = None
        if session.image is not None:
            chosen = h.chosen_mask(session)
            canvas = sam_view(
                session.image, chosen[0] if chosen else None, session.prompt,
                session.pending_corner, options.view_max_side,
            )
        choices: list[tuple[str, int]] = []
        value = None
        if session.result is not None:
            choices = [(f"#{i + 1}  score {s:.3f}", i) for i, s in enumerate(session.result.scores)]
            value = session.steps[-1].choice
        return session, canvas, gr.Radio(choices=choices, value=value), h.sam_summary(session)

    def det_outputs(session: Session, dets, suffix: str) -> tuple:
        path = h.write_coco(ctx, session, dets, suffix)
        view = detections_view(session.image, dets)
        return session, view, h.detection_rows(dets), str(path)

    # ---- handlers -------------------------------------------------------------------
    @_user_errors
    def on_upload(session: Session, image: dict | None):
        """Load an image into this session (and compute its SAM embedding); None clears it.

        ``image`` is Gradio's raw upload record (``path``, ``orig_name``), not decoded yet.
        """
        if not image:
            return on_clear_image(session)
        if not image.get("path"):
            raise gr.Error("no image received: upload a JPEG, PNG, WebP, BMP or TIFF file")
        name = image.get("orig_name") or Path(image["path"]).name
        h.load_image(ctx, session, image["path"], name)
        ih, iw = session.image.shape[:2]
        sam_note = hub.sam_status()
        status = f"Loaded **{session.image_name}** ({iw}x{ih})." + (
            f" {sam_note}" if sam_note else ""
        )
        return (*sam_outputs(session), status)

    def on_clear_image(session: Session):
        session.image = None
        session.detections = None
        session.clear_prompts()
        return (*sam_outputs(session), "")

    @_user_errors
    def on_detect(session: Session, model: str, conf: float, iou: float, max_det: float):
        """Run the chosen detector; returns the drawn image, the table and a COCO JSON file."""
        dets = h.detect(ctx, session, model, conf, iou, int(max_det or 100))
        return det_outputs(session, dets, "detections")

    def on_detect_quiet(session: Session, model: str, conf: float, iou: float, max_det: float):
        if session.image is None:  # no image (cleared, or sliders moved before an upload)
            return session, None, [], None
        return on_detect(session, model, conf, iou, max_det)

    @_user_errors
    def on_detections_to_sam(session: Session):
        """A SAM mask for every detected box; returns the drawn image, table and COCO JSON."""
        dets = h.detections_to_sam(ctx, session)
        return det_outputs(session, dets, "sam_detections")

    @_user_errors
    def on_click(session: Session, mode: str, multimask: bool, refine: bool, evt: gr.SelectData):
        if session.image is None:
            raise gr.Error("upload an image first, then click on an object")
        s = view_scale(session.image.shape, options.view_max_side)
        x, y = (float(v) / s for v in evt.index[:2])
        if mode == CLICK_MODES[2]:
            h.sam_corner(ctx, session, x, y, multimask, refine)
        else:
            h.sam_point(ctx, session, x, y, mode == CLICK_MODES[0], multimask, refine)
        return sam_outputs(session)

    @_user_errors
    def on_point(session: Session, x: float, y: float, label: str, multimask: bool, refine: bool):
        """Add a click at pixel (x, y) of the original image; label 'positive' or 'negative'."""
        if label not in ("positive", "negative"):
            raise gr.Error(f"label: expected 'positive' or 'negative', found {label!r}")
        h.sam_point(ctx, session, x, y, label == "positive", multimask, refine)
        return sam_outputs(session)

    @_user_errors
    def on_box(session, x1: float, y1: float, x2: float, y2: float, multimask: bool, refine: bool):
        """Set the box prompt x1, y1, x2, y2 (pixels of the original image)."""
        h.sam_box(ctx, session, (x1, y1, x2, y2), multimask, refine)
        return sam_outputs(session)

    @_user_errors
    def on_undo(session: Session):
        """Undo the last prompt."""
        h.sam_undo(ctx, session)
        return sam_outputs(session)

    def on_clear(session: Session):
        """Remove every prompt and the mask."""
        h.sam_clear(session)
        return sam_outputs(session)

    @_user_errors
    def on_choose(session: Session, index: float):
        """Show candidate mask ``index`` (0-based) of the current result."""
        h.sam_choose(session, int(index) if index is not None else None)
        return sam_outputs(session)

    @_user_errors
    def on_export(session: Session):
        """The shown mask as a PNG and as COCO RLE JSON."""
        png, rle = h.sam_export(ctx, session)
        return [str(png), str(rle)]

    # ---- layout ---------------------------------------------------------------------
    samples = h.write_samples(ctx.out_dir / "samples") if options.samples else []
    # analytics_enabled=False: Gradio otherwise phones home for analytics and a version check;
    # the demo is offline (set per app, not through os.environ, which is the caller's).
    with gr.Blocks(title="detseg demo", delete_cache=(300, 900), analytics_enabled=False) as demo:
        state = gr.State(Session(), time_to_live=options.session_ttl_s, delete_callback=ctx.forget)
        gr.Markdown(
            "## detseg: detection, instance segmentation and Segment Anything\n"
            f"Upload an image (at most {ctx.limits.describe()}), then detect objects or "
            "click on them."
        )
        with gr.Row():
            image_in = gr.Image(
                label="Image", type="filepath", sources=["upload", "clipboard"], height=320,
                elem_id="image-in",
            )
            with gr.Column():
                status = gr.Markdown(elem_id="status", label="Status")
                if samples:
                    gr.Examples(
                        [[str(p)] for p in samples], inputs=[image_in], label="Samples",
                        example_labels=[f"shapes {i + 1}" for i in range(len(samples))],
                    )
        with gr.Tabs(selected=eval_tab.TAB_ID if evalset is not None else None):
            with gr.Tab("Segment Anything", id="sam"):
                with gr.Row():
                    with gr.Column(scale=1):
                        mode = gr.Radio(CLICK_MODES, value=CLICK_MODES[0], label="A click adds")
                        multimask = gr.Checkbox(True, label="Multimask output (3 candidates)")
                        refine = gr.Checkbox(False, label="Refine with the previous mask")
                        candidates = gr.Radio([], label="Candidate masks", elem_id="candidates")
                        with gr.Row():
                            undo_btn = gr.Button("Undo")
                            clear_btn = gr.Button("Clear")
                        with gr.Accordion("Enter a point or a box", open=False):
                            with gr.Row():
                                px = gr.Number(label="x", precision=1)
                                py = gr.Number(label="y", precision=1)
                                plabel = gr.Radio(["positive", "negative"], value="positive", label="label")
                            point_btn = gr.Button("Add point")
                            with gr.Row():
                                bx1 = gr.Number(label="x1", precision=1)
                                by1 = gr.Number(label="y1", precision=1)
                                bx2 = gr.Number(label="x2", precision=1)
                                by2 = gr.Number(label="y2", precision=1)
                            box_btn = gr.Button("Set box")
                        export_btn = gr.Button("Download mask (PNG + COCO RLE)")
                        mask_files = gr.File(label="Mask files", file_count="multiple")
                        choose_idx = gr.Number(visible=False, precision=0)
                        choose_btn = gr.Button(visible=False)
                    with gr.Column(scale=2):
                        canvas = gr.Image(
                            label="Click on an object", interactive=False, format="jpeg",
                            elem_id="sam-canvas",
                        )
                        summary = gr.JSON(label="Prompts and scores", elem_id="sam-summary")
            with gr.Tab("Detect & segment", id="detect"):
                with gr.Row():
                    with gr.Column(scale=1):
                        model = gr.Dropdown(hub.names, value=hub.default_name, label="Model")
                        conf = gr.Slider(0.0, 1.0, 0.25, step=0.01, label="Confidence threshold")
                        iou = gr.Slider(0.0, 1.0, 0.45, step=0.01, label="IoU threshold (NMS)")
                        max_det = gr.Number(100, label="Max detections", precision=0, minimum=1)
                        detect_btn = gr.Button("Detect", variant="primary")
                        to_sam_btn = gr.Button("Segment every detection with SAM")
                    with gr.Column(scale=2):
                        det_image = gr.Image(
                            label="Detections", interactive=False, format="jpeg", elem_id="det-image"
                        )
                det_table = gr.Dataframe(
                    headers=h.TABLE_HEADERS, interactive=False, label="Detections", elem_id="det-table"
                )
                det_file = gr.File(label="COCO results JSON", elem_id="det-file")
            eval_tab.build_tab(demo, evalset, options.concurrency_limit, options.session_ttl_s)

        sam_out = [state, canvas, candidates, summary]
        det_in = [state, model, conf, iou, max_det]
        det_out = [state, det_image, det_table, det_file]
        limit = options.concurrency_limit

        def api(event, fn, inputs, outputs, name: str | None, **kw):
            return event(
                fn, inputs, outputs, api_name=name, concurrency_limit=limit,
                concurrency_id="models", api_visibility="public" if name else "private", **kw,
            )

        # preprocess=False: the handler gets the raw upload and decodes it itself, so a
        # non-image or corrupt file becomes a clear message instead of PIL's traceback.
        # .change covers an upload, a sample click and the clear button alike (no handler
        # writes to image_in).
        api(image_in.change, on_upload, [state, image_in], [*sam_out, status], "load_image",
            preprocess=False, show_progress_on=[canvas]).then(
            on_detect_quiet, det_in, det_out, api_visibility="private",
            concurrency_limit=limit, concurrency_id="models",
        )
        api(detect_btn.click, on_detect, det_in, det_out, "detect")
        for trigger in (conf.release, iou.release, model.input):
            api(trigger, on_detect_quiet, det_in, det_out, None)
        api(to_sam_btn.click, on_detections_to_sam, [state], det_out, "detections_to_sam")
        api(canvas.select, on_click, [state, mode, multimask, refine], sam_out, None)
        api(point_btn.click, on_point, [state, px, py, plabel, multimask, refine], sam_out, "sam_point")
        api(box_btn.click, on_box, [state, bx1, by1, bx2, by2, multimask, refine], sam_out, "sam_box")
        api(undo_btn.click, on_undo, [state], sam_out, "sam_undo")
        api(clear_btn.click, on_clear, [state], sam_out, "sam_clear")
        api(candidates.input, on_choose, [state, candidates], sam_out, None)
        api(choose_btn.click, on_choose, [state, choose_idx], sam_out, "sam_choose")
        api(export_btn.click, on_export, [state], [mask_files], "sam_export")
    return demo


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
        allowed_paths=[str(ctx.out_dir)],
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
