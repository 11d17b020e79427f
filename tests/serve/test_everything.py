"""The demo's "Segment everything": the session functions, and the two API endpoints.

Reference: `SamMaskGenerator` run directly on the image with the same predictor and
settings (the demo must give exactly its masks, on the session's embedding).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detseg.errors import InputError
from detseg.pipeline.sam_auto import SamMaskGenerator
from detseg.serve import everything as ev
from detseg.serve import handlers as h
from detseg.serve.render import _resize, view_scale
from detseg.serve.state import Session
from tests.serve.conftest import builtin_sam


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    if builtin_sam() is None:
        pytest.skip("the embedded SAM is not packaged: a random-weight SAM finds no shapes")
    return h.write_samples(tmp_path_factory.mktemp("samples"), 2)


def _loaded(ctx, path: Path) -> Session:
    session = Session()
    h.load_image(ctx, session, path, path.name)
    return session


def test_masks_are_the_generators_on_the_sessions_own_embedding(ctx, samples, monkeypatch) -> None:
    session = _loaded(ctx, samples[0])
    sam = ctx.hub.sam()
    reference = SamMaskGenerator(sam, ev.DEMO_SETTINGS).generate(session.image)
    assert len(reference) >= 3  # the embedded SAM finds several shapes with the demo settings

    def no_encoder(image):
        raise AssertionError("the image was encoded again")

    monkeypatch.setattr(sam, "embed", no_encoder)
    got = ev.segment_everything(ctx, session)
    assert got.rles == reference.rles
    np.testing.assert_array_equal(got.point_coords, reference.point_coords)
    assert session.everything is got and ev.showing(session)
    assert [v for _, v in ev.choices(session)] == list(range(len(got)))
    assert f"{len(got)} masks" in ev.status(session) and "16x16 points" in ev.status(session)
    assert ev.summary(session)["everything"] == len(got)


def test_each_mask_becomes_the_current_mask_then_undo_refine_export(ctx, samples) -> None:
    session = _loaded(ctx, samples[1])
    gen = ev.segment_everything(ctx, session)
    masks = gen.masks()
    for i in range(len(gen)):
        assert ev.pick(ctx, session, i) >= 0.99
        shown, _ = h.chosen_mask(session)
        inter, union = (shown & masks[i]).sum(), (shown | masks[i]).sum()
        assert inter / union >= 0.99, i
        assert session.prompt.points == (tuple(gen.point_coords[i]),) and len(session.steps) == 1
        assert not ev.showing(session) and ev.status(session) is None
    last, _ = h.chosen_mask(session)
    # refine with a negative click, undo back to the picked mask, download it
    h.sam_point(ctx, session, 2, 2, positive=False, multimask=False, refine=True)
    assert session.prompt.labels == (1, 0)
    h.sam_undo(ctx, session)
    np.testing.assert_array_equal(h.chosen_mask(session)[0], last)
    png, rle = h.sam_export(ctx, session)
    np.testing.assert_array_equal(np.asarray(Image.open(png)) > 127, last)
    assert json.loads(rle.read_text())[0]["area"] == int(last.sum())
    # Clear shows every mask again; a new image drops them
    h.sam_clear(session)
    assert ev.showing(session)
    h.load_image(ctx, session, samples[0], samples[0].name)
    assert session.everything is None and ev.choices(session) == []


@pytest.mark.parametrize("index", [-1, 10_000, 1.5, None, "two"])
def test_a_bad_index_is_explained(ctx, samples, index) -> None:
    session = _loaded(ctx, samples[0])
    with pytest.raises(InputError, match="Segment everything"):
        ev.pick(ctx, session, 0)
    n = len(ev.segment_everything(ctx, session))
    with pytest.raises(InputError, match=rf"index in \[0, {n}\)"):
        ev.pick(ctx, session, 10_000 if index == 10_000 else index)
    with pytest.raises(InputError, match="no image"):
        ev.pick(ctx, Session(), 0)


def test_view_paints_each_mask_in_its_own_colour(ctx, samples) -> None:
    session = _loaded(ctx, samples[0])
    gen = ev.segment_everything(ctx, session)
    view = ev.everything_view(session.image, gen, 1024, 640)
    s = view_scale(session.image.shape, 1024, 640)
    assert view.shape[:2] == tuple(round(v * s) for v in session.image.shape[:2])
    plain = ev.everything_view(session.image, gen.__class__(
        rles=[], boxes=np.zeros((0, 4)), predicted_iou=np.zeros(0, np.float32),
        stability_score=np.zeros(0, np.float32), point_coords=np.zeros((0, 2)),
        crop_boxes=np.zeros((0, 4), np.int64), image_size=gen.image_size), 1024, 640)
    changed = np.abs(view.astype(int) - plain).sum(axis=2) > 30
    masks = gen.masks()
    for i in range(len(gen)):  # every mask shows somewhere (drawn over or labelled)
        assert changed[_resize(masks[i], s, nearest=True)].any(), i


# ---- the API ----------------------------------------------------------------------------
def test_segment_everything_pick_and_download_through_the_api(served: str, samples) -> None:
    gradio_client = pytest.importorskip("gradio_client")
    from gradio_client.exceptions import AppError

    c = gradio_client.Client(served, verbose=False)
    with pytest.raises(AppError, match="no image loaded"):
        c.predict(api_name="/sam_everything")
    c.predict(gradio_client.handle_file(str(samples[0])), api_name="/load_image")
    with pytest.raises(AppError, match="Segment everything"):
        c.predict(0, api_name="/sam_pick_everything")

    canvas, _, summary, status, masks = c.predict(api_name="/sam_everything")
    n = summary["everything"]
    assert n >= 1 and f"{n} masks" in status and "predicted IoU > 0.6" in status
    assert [v for _, v in masks["choices"]] == list(range(n))
    assert summary["steps"] == 0 and Image.open(canvas).size[0] >= 320

    _, candidates, picked, pick_status, masks = c.predict(n - 1, api_name="/sam_pick_everything")
    assert picked["steps"] == 1 and picked["labels"] == [1] and picked["area"] > 0
    assert len(candidates["choices"]) == 3 and "1 positive click" in pick_status
    png, rle = c.predict(api_name="/sam_export")
    assert int((np.asarray(Image.open(png)) > 127).sum()) == picked["area"]
    assert json.loads(Path(rle).read_text())[0]["area"] == picked["area"]

    _, _, refined, _ = c.predict(3, 3, "negative", False, True, api_name="/sam_point")
    assert refined["labels"] == [1, 0]
    _, _, undone, _ = c.predict(api_name="/sam_undo")
    assert undone["area"] == picked["area"] and undone["choice"] == picked["choice"]

    for bad in (n, -1):
        with pytest.raises(AppError, match=rf"index in \[0, {n}\)"):
            c.predict(bad, api_name="/sam_pick_everything")
