"""The demo's actions, checked against the pipeline called directly on the same inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detseg.errors import InputError, ModelError
from detseg.serve import handlers as h
from detseg.serve.models import ModelHub, detector_specs
from detseg.serve.state import MAX_STEPS, Session


@pytest.fixture(scope="module")
def reference_sam(sam_paths):
    """A second, independent predictor on the same ONNX files: the reference answer."""
    from detseg.pipeline.sam import SamPredictor

    return SamPredictor.load(*sam_paths, device="cpu")


@pytest.fixture()
def loaded(ctx, coco_images) -> Session:
    session = Session()
    h.load_image(ctx, session, coco_images[0], coco_images[0].name)
    return session


def _ref(reference_sam, image, **prompt):
    reference_sam.set_image(image)
    defaults = dict(point_coords=None, point_labels=None, box=None, mask_input=None,
                    multimask_output=True)
    return reference_sam.predict(**{**defaults, **prompt})


def test_load_image_sets_state_and_names(loaded: Session, coco_images) -> None:
    assert loaded.image.shape[2] == 3 and loaded.image.dtype == np.uint8
    assert loaded.image_name == coco_images[0].name
    assert len(loaded.image_key) == 40 and loaded.result is None


def test_click_matches_sam_predictor(ctx, loaded, reference_sam) -> None:
    h.sam_point(ctx, loaded, 320, 200, positive=True, multimask=True)
    h.sam_point(ctx, loaded, 100, 300, positive=False, multimask=True)
    ref = _ref(reference_sam, loaded.image, point_coords=np.array([[320, 200], [100, 300]], np.float32),
               point_labels=np.array([1, 0]), multimask_output=True)
    assert np.array_equal(loaded.result.masks, ref.masks)
    np.testing.assert_allclose(loaded.result.scores, ref.scores, rtol=1e-5, atol=1e-6)
    assert loaded.steps[-1].choice == int(np.argmax(ref.scores))
    assert loaded.prompt.labels == (1, 0) and len(loaded.steps) == 2


def test_refine_feeds_back_the_chosen_low_res_mask(ctx, loaded, reference_sam) -> None:
    h.sam_point(ctx, loaded, 320, 200, multimask=True)
    first = loaded.result
    chosen = loaded.steps[-1].choice
    h.sam_point(ctx, loaded, 330, 210, multimask=False, refine=True)
    np.testing.assert_array_equal(loaded.steps[-1].mask_input, first.low_res_logits[chosen][None])
    ref = _ref(reference_sam, loaded.image, point_coords=np.array([[320, 200], [330, 210]], np.float32),
               point_labels=np.array([1, 1]), mask_input=first.low_res_logits[chosen][None],
               multimask_output=False)
    assert loaded.result.masks.shape[0] == 1
    assert np.array_equal(loaded.result.masks, ref.masks)


def test_undo_restores_the_previous_result_exactly(ctx, loaded) -> None:
    h.sam_point(ctx, loaded, 320, 200)
    h.sam_point(ctx, loaded, 200, 100, refine=True)
    before = (loaded.result.masks.copy(), loaded.result.scores.copy(), loaded.steps[-1].choice)
    h.sam_point(ctx, loaded, 50, 50, positive=False, refine=True)
    h.sam_undo(ctx, loaded)
    assert np.array_equal(loaded.result.masks, before[0])
    np.testing.assert_array_equal(loaded.result.scores, before[1])
    assert loaded.steps[-1].choice == before[2] and len(loaded.steps) == 2
    h.sam_undo(ctx, loaded)
    h.sam_undo(ctx, loaded)
    assert loaded.result is None and loaded.steps == []
    h.sam_undo(ctx, loaded)  # nothing left: a no-op, not an error


def test_box_by_two_clicks_equals_entered_box(ctx, loaded, reference_sam) -> None:
    assert h.sam_corner(ctx, loaded, 400, 300) is False
    assert loaded.pending_corner == (400.0, 300.0) and loaded.result is None
    assert h.sam_corner(ctx, loaded, 100, 50) is True
    assert loaded.prompt.box == (100.0, 50.0, 400.0, 300.0)
    ref = _ref(reference_sam, loaded.image, box=np.array([100, 50, 400, 300], np.float32),
               multimask_output=False)
    assert np.array_equal(loaded.result.masks, ref.masks)


def test_undo_drops_a_half_drawn_box_first(ctx, loaded) -> None:
    h.sam_point(ctx, loaded, 320, 200)
    h.sam_corner(ctx, loaded, 10, 10)
    h.sam_undo(ctx, loaded)
    assert loaded.pending_corner is None and len(loaded.steps) == 1


@pytest.mark.parametrize(
    ("box", "message"),
    [((10, 10, 10, 50), "at least 1 pixel"), ((-50, -50, -10, -10), "at least 1 pixel"),
     (("a", 1, 2, 3), "four numbers"), ((1, 2, 3), "four numbers")],
)
def test_bad_boxes_are_refused(ctx, loaded, box, message) -> None:
    with pytest.raises(InputError, match=message):
        h.sam_box(ctx, loaded, box)


def test_box_is_clipped_to_the_image(ctx, loaded) -> None:
    h_, w = loaded.image.shape[:2]
    h.sam_box(ctx, loaded, (-20, -20, w + 50, 40))
    assert loaded.prompt.box == (0.0, 0.0, float(w), 40.0)


@pytest.mark.parametrize(("x", "y"), [(-1, 5), (5, -1), (10_000, 5), (5, 10_000), (None, 5)])
def test_points_outside_the_image_are_refused(ctx, loaded, x, y) -> None:
    with pytest.raises(InputError, match="expected x in"):
        h.sam_point(ctx, loaded, x, y)


def test_actions_before_an_upload_say_what_to_do(ctx) -> None:
    session = Session()
    for action in (lambda: h.sam_point(ctx, session, 1, 1), lambda: h.sam_box(ctx, session, (0, 0, 5, 5)),
                   lambda: h.detect(ctx, session, ctx.hub.default_name, 0.25, 0.45),
                   lambda: h.detections_to_sam(ctx, session)):
        with pytest.raises(InputError, match="upload an image"):
            action()
    with pytest.raises(InputError, match="no mask"):
        h.sam_export(ctx, session)
    with pytest.raises(InputError, match="no mask"):
        h.sam_choose(session, 0)


def test_choose_candidate(ctx, loaded) -> None:
    h.sam_point(ctx, loaded, 320, 200, multimask=True)
    for i in range(3):
        h.sam_choose(loaded, i)
        mask, score = h.chosen_mask(loaded)
        assert np.array_equal(mask, loaded.result.masks[i]) and score == loaded.result.scores[i]
    with pytest.raises(InputError, match=r"index in \[0, 3\)"):
        h.sam_choose(loaded, 3)


def test_export_png_and_rle_round_trip(ctx, loaded) -> None:
    from pycocotools import mask as mask_utils

    h.sam_point(ctx, loaded, 320, 200)
    mask, score = h.chosen_mask(loaded)
    png, rle_path = h.sam_export(ctx, loaded)
    assert png.parent == rle_path.parent == ctx.out_dir / loaded.session_id
    assert np.array_equal(np.asarray(Image.open(png)) > 127, mask)
    (record,) = json.loads(rle_path.read_text())
    rle = dict(record["segmentation"], counts=record["segmentation"]["counts"].encode())
    assert np.array_equal(mask_utils.decode(rle).astype(bool), mask)
    assert record["image_id"] == loaded.image_name and record["area"] == int(mask.sum())
    assert record["score"] == pytest.approx(score, abs=1e-5)
    ys, xs = np.nonzero(mask)
    assert record["bbox"] == pytest.approx([xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()])
    ctx.forget(loaded)
    assert not png.exists()


def test_detect_matches_detector_and_writes_coco(ctx, loaded) -> None:
    name = ctx.hub.default_name
    dets = h.detect(ctx, loaded, name, conf=0.3, iou=0.5, max_det=50)
    ref = ctx.hub.detector(name).predict([loaded.image], conf=0.3, iou=0.5, max_det=50)[0]
    assert len(dets) == len(ref) > 0
    np.testing.assert_array_equal(dets.boxes, ref.boxes)
    rows = h.detection_rows(dets)
    names = ctx.hub.detector(name).meta.names
    assert [r[1] for r in rows] == [names[int(c)] for c in ref.class_ids]
    path = h.write_coco(ctx, loaded, dets, "detections")
    records = json.loads(path.read_text())
    assert [r["bbox"] for r in records] == [r["bbox"] for r in ref.to_coco(loaded.image_name)]
    assert all(r["category_name"] == names[r["category_id"]] for r in records)


@pytest.mark.parametrize(("conf", "iou", "max_det"), [(1.5, 0.5, 10), (0.2, -0.1, 10), (0.2, 0.5, 0)])
def test_detect_refuses_bad_thresholds(ctx, loaded, conf, iou, max_det) -> None:
    with pytest.raises(InputError):
        h.detect(ctx, loaded, ctx.hub.default_name, conf, iou, max_det)


def test_unknown_model_is_refused(ctx, loaded) -> None:
    with pytest.raises(ModelError, match="not offered"):
        h.detect(ctx, loaded, "no-such-model", 0.25, 0.45)


def test_detections_to_sam_prompts_each_box(ctx, loaded, reference_sam) -> None:
    with pytest.raises(InputError, match="run the detector first"):
        h.detections_to_sam(ctx, loaded)
    dets = h.detect(ctx, loaded, ctx.hub.default_name, 0.3, 0.5)
    out = h.detections_to_sam(ctx, loaded)
    assert len(out) == len(dets) > 0 and out.masks.shape == (len(dets), *loaded.image.shape[:2])
    np.testing.assert_array_equal(out.class_ids, dets.class_ids)
    for i, box in enumerate(dets.boxes):
        ref = _ref(reference_sam, loaded.image, box=box, multimask_output=False)
        assert np.array_equal(out.masks[i], ref.masks[0])


class CountingSession:
    """Wraps an onnxruntime-backed session and counts its runs."""

    def __init__(self, inner) -> None:
        self.inner, self.runs = inner, 0
        self.metadata, self.providers = inner.metadata, inner.providers

    def run(self, *args, **kwargs):
        self.runs += 1
        return self.inner.run(*args, **kwargs)


def test_encoder_runs_once_per_image_and_clicks_run_only_the_decoder(
    sam_paths, yolox_nano, coco_images, tmp_path
) -> None:
    from detseg.pipeline.sam import SamPredictor
    from detseg.pipeline.session import Session as OrtSession
    from detseg.serve.app import make_context
    from detseg.serve.limits import Limits

    enc = CountingSession(OrtSession(sam_paths[0], device="cpu"))
    dec = CountingSession(OrtSession(sam_paths[1], device="cpu"))
    hub = ModelHub(detector_specs([str(yolox_nano)], "yolox"), device="cpu",
                   load_sam=lambda: SamPredictor(enc, dec))
    ctx = make_context(hub, Limits(), tmp_path)
    a, b = Session(), Session()
    h.load_image(ctx, a, coco_images[0], "a.jpg")
    h.load_image(ctx, b, coco_images[1], "b.jpg")
    assert enc.runs == 2  # at upload, before any click
    for i in range(3):  # two sessions interleaving on the shared predictor
        h.sam_point(ctx, a, 100 + i, 100)
        h.sam_point(ctx, b, 120 + i, 90)
    h.sam_undo(ctx, a)
    h.sam_box(ctx, b, (10, 10, 200, 200))
    assert enc.runs == 2 and dec.runs == 8


def test_sessions_sharing_the_predictor_get_their_own_answers(ctx, coco_images, reference_sam) -> None:
    a, b = Session(), Session()
    h.load_image(ctx, a, coco_images[0], coco_images[0].name)
    h.load_image(ctx, b, coco_images[1], coco_images[1].name)
    h.sam_point(ctx, a, 200, 150)
    h.sam_point(ctx, b, 200, 150)  # the predictor's current image is now b's
    h.sam_point(ctx, a, 250, 150)
    ref = _ref(reference_sam, a.image, point_coords=np.array([[200, 150], [250, 150]], np.float32),
               point_labels=np.array([1, 1]))
    assert np.array_equal(a.result.masks, ref.masks)


def test_history_is_capped(ctx, loaded) -> None:
    for i in range(MAX_STEPS + 3):
        h.sam_point(ctx, loaded, 10 + i, 20)
    assert len(loaded.steps) == MAX_STEPS
    assert len(loaded.prompt.points) == MAX_STEPS + 3  # the prompt itself is kept whole


def test_sam_that_cannot_load_leaves_detection_working(yolox_nano, coco_images, tmp_path) -> None:
    from detseg.serve.app import make_context
    from detseg.serve.limits import Limits

    hub = ModelHub(detector_specs([str(yolox_nano)], "yolox"), device="cpu",
                   sam_paths=(tmp_path / "enc.onnx", tmp_path / "dec.onnx"))
    ctx = make_context(hub, Limits(), tmp_path)
    session = Session()
    h.load_image(ctx, session, coco_images[0], "x.jpg")
    assert len(h.detect(ctx, session, hub.default_name, 0.3, 0.5)) > 0
    with pytest.raises(ModelError, match="Segment Anything is not available: .*enc.onnx"):
        h.sam_point(ctx, session, 10, 10)
    assert "not available" in hub.sam_status()


def test_detector_specs_from_command_line(yolox_nano: Path) -> None:
    specs = detector_specs([str(yolox_nano), "builtin", str(yolox_nano)], head="yolox")
    assert [s.name for s in specs] == ["yolox_nano.onnx", "builtin"]
    assert specs[0].head == "yolox" and specs[1].model is None
    assert [s.name for s in detector_specs([])] == ["builtin"]


# ---- shared embeddings: per-session state, no lock -----------------------------------------
class SpySam:
    """A SamPredictor wrapper that counts embed/set_image calls and can hold decoder calls
    at a barrier (to prove that two sessions are inside the decoder at the same time)."""

    def __init__(self, inner, barrier=None) -> None:
        self.inner, self.barrier = inner, barrier
        self.embeds = self.set_images = 0
        self.embeddings_seen: list = []

    def embed(self, image):
        self.embeds += 1
        return self.inner.embed(image)

    def set_image(self, image):
        self.set_images += 1
        return self.inner.set_image(image)

    def predict(self, **kw):
        self.embeddings_seen.append(kw.get("embedding"))
        if self.barrier is not None:
            self.barrier.wait()
        return self.inner.predict(**kw)

    def predict_batch(self, **kw):  # `segment_boxes` sends all boxes in one batched call
        self.embeddings_seen.append(kw.get("embedding"))
        return self.inner.predict_batch(**kw)


def _spy_ctx(sam_paths, yolox_nano, tmp_path, barrier=None):
    from detseg.pipeline.sam import SamPredictor
    from detseg.serve.app import make_context
    from detseg.serve.limits import Limits

    spy = SpySam(SamPredictor.load(*sam_paths, device="cpu"), barrier)
    hub = ModelHub(detector_specs([str(yolox_nano)], "yolox"), device="cpu", load_sam=lambda: spy)
    return make_context(hub, Limits(), tmp_path), spy


def test_clicks_use_the_session_embedding_without_hashing_the_image(
    sam_paths, yolox_nano, coco_images, tmp_path
) -> None:
    ctx, spy = _spy_ctx(sam_paths, yolox_nano, tmp_path)
    s = Session()
    h.load_image(ctx, s, coco_images[0], "a.jpg")
    assert spy.embeds == 1 and s.embedding is not None
    for i in range(4):
        h.sam_point(ctx, s, 100 + 10 * i, 120)
    h.sam_undo(ctx, s)
    h.sam_box(ctx, s, (10, 10, 200, 200))
    h.detect(ctx, s, ctx.hub.default_name, 0.3, 0.5)
    h.detections_to_sam(ctx, s)
    assert spy.embeds == 1 and spy.set_images == 0  # no encoder run, no image hash per click
    assert spy.embeddings_seen and all(e is s.embedding for e in spy.embeddings_seen)


def test_sessions_click_at_the_same_time_without_waiting_on_each_other(
    sam_paths, yolox_nano, coco_images, reference_sam, tmp_path
) -> None:
    import threading
    from concurrent.futures import ThreadPoolExecutor

    # Every decoder call waits until 4 sessions are inside it at once: a lock around SAM
    # (or a shared "current image") makes the barrier break instead of the test passing.
    barrier = threading.Barrier(4, timeout=60)
    ctx, spy = _spy_ctx(sam_paths, yolox_nano, tmp_path, barrier)
    sessions = [Session() for _ in range(4)]
    for s, path in zip(sessions, coco_images[:4], strict=True):
        h.load_image(ctx, s, path, path.name)

    def clicks(s: Session) -> None:
        for k in range(3):
            h.sam_point(ctx, s, 150 + 20 * k, 140, multimask=True)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(clicks, sessions))
    for s in sessions:  # each session got the answer for its own image
        pts = np.array([[150, 140], [170, 140], [190, 140]], np.float32)
        ref = _ref(reference_sam, s.image, point_coords=pts, point_labels=np.ones(3, int))
        assert np.array_equal(s.result.masks, ref.masks), s.image_name


def test_a_refused_upload_unloads_the_previous_image(ctx, loaded, tmp_path) -> None:
    h.sam_point(ctx, loaded, 100, 100)
    bad = tmp_path / "holiday.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(InputError, match="holiday.png"):
        h.load_image(ctx, loaded, bad, bad.name)
    assert loaded.image is None and loaded.embedding is None and loaded.result is None
    with pytest.raises(InputError, match="no image loaded"):
        h.detect(ctx, loaded, ctx.hub.default_name, 0.3, 0.5)


def test_status_lines_say_what_is_going_on(ctx, loaded) -> None:
    assert h.sam_status(loaded) == "Click on an object to segment it."
    h.sam_corner(ctx, loaded, 40, 50)
    assert "first corner at (40, 50)" in h.sam_status(loaded)
    assert "Click the opposite corner" in h.sam_status(loaded)
    h.sam_corner(ctx, loaded, 200, 220)
    h.sam_point(ctx, loaded, 100, 120, positive=False, multimask=False)
    line = h.sam_status(loaded)
    assert "1 negative click, a box" in line and f"{int(loaded.result.masks[0].sum()):,} pixels" in line
    assert f"Loaded **{loaded.image_name}** (640x426)" in h.image_status(loaded)
    loaded.error, loaded.error_area = "x.png: not an image", "image"
    assert h.image_status(loaded).startswith("**Not loaded:** x.png: not an image")


def test_a_detection_becomes_a_box_prompt(ctx, loaded, reference_sam) -> None:
    with pytest.raises(InputError, match="run the detector first"):
        h.detection_to_prompt(ctx, loaded, 0)
    h.sam_point(ctx, loaded, 5, 5)
    dets = h.detect(ctx, loaded, ctx.hub.default_name, 0.3, 0.5)
    h.detection_to_prompt(ctx, loaded, 1)
    assert loaded.prompt.points == () and loaded.prompt.box == pytest.approx(tuple(dets.boxes[1]))
    ref = _ref(reference_sam, loaded.image, box=dets.boxes[1], multimask_output=False)
    assert np.array_equal(loaded.result.masks, ref.masks)
    with pytest.raises(InputError, match=r"row number in \[0, "):
        h.detection_to_prompt(ctx, loaded, len(dets))
