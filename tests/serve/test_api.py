"""The demo through its API: gradio_client against the app launched on 127.0.0.1 in the test."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from detseg.serve.app import API_NAMES  # noqa: E402


def _client(url: str, **kw) -> Client:
    return Client(url, verbose=False, **kw)


def test_serves_on_loopback_with_every_named_endpoint(served: str) -> None:
    assert urlparse(served).hostname == "127.0.0.1"
    api = _client(served).view_api(return_format="dict", print_info=False)
    assert set(api["named_endpoints"]) == {f"/{n}" for n in API_NAMES}
    # the click handler and slider re-runs are UI-only
    assert not api["unnamed_endpoints"]


def test_detect_then_segment_through_the_api(served: str, coco_images, hub) -> None:
    c = _client(served)
    *_, status = c.predict(handle_file(str(coco_images[0])), api_name="/load_image")
    assert coco_images[0].name in status
    image_path, table, coco_json, det_status = c.predict(hub.default_name, 0.3, 0.5, 100, api_name="/detect")
    assert f"{len(table['data'])} detections" in det_status
    assert Image.open(image_path).size == Image.open(coco_images[0]).size
    records = json.loads(Path(coco_json).read_text())
    assert len(records) == len(table["data"]) > 0
    assert [r["score"] for r in records] == pytest.approx([row[2] for row in table["data"]], abs=1e-3)

    canvas, candidates, summary, sam_status = c.predict(320, 200, "positive", True, False, api_name="/sam_point")
    assert "1 positive click" in sam_status and f"{summary['area']:,} pixels" in sam_status
    assert summary["points"] == [[320.0, 200.0]] and summary["labels"] == [1]
    assert len(summary["scores"]) == 3 and summary["choice"] == int(np.argmax(summary["scores"]))
    assert [v for _, v in candidates["choices"]] == [0, 1, 2]
    assert Image.open(canvas).size == Image.open(coco_images[0]).size

    _, _, chosen, _ = c.predict(2, api_name="/sam_choose")
    assert chosen["choice"] == 2 and chosen["scores"] == summary["scores"]
    _, _, neg, _ = c.predict(50, 50, "negative", False, True, api_name="/sam_point")
    assert neg["labels"] == [1, 0] and len(neg["scores"]) == 1
    _, _, undone, _ = c.predict(api_name="/sam_undo")
    assert undone["labels"] == [1] and undone["choice"] == 2 and undone["area"] == chosen["area"]

    png, rle = c.predict(api_name="/sam_export")
    mask = np.asarray(Image.open(png)) > 127
    assert int(mask.sum()) == undone["area"]
    assert json.loads(Path(rle).read_text())[0]["area"] == undone["area"]

    _, _, boxed, _ = c.predict(10, 20, 300, 250, False, False, api_name="/sam_box")
    assert boxed["box"] == [10.0, 20.0, 300.0, 250.0] and len(boxed["scores"]) == 1
    _, _, cleared, _ = c.predict(api_name="/sam_clear")
    assert cleared["steps"] == 0 and cleared["scores"] == []

    _, sam_table, sam_json, _ = c.predict(api_name="/detections_to_sam")
    assert len(sam_table["data"]) == len(table["data"])
    assert all(r["segmentation"]["size"] == list(mask.shape) for r in json.loads(Path(sam_json).read_text()))

    # a detection sent to Segment Anything: its box becomes the prompt, ready for more clicks
    _, _, refined, refine_status = c.predict(1, api_name="/refine_detection")[:4]
    assert refined["box"] == pytest.approx(table["data"][1][3:7], abs=0.06)
    assert refined["points"] == [] and len(refined["scores"]) == 1 and refined["area"] > 0
    assert "a box" in refine_status
    _, _, more, _ = c.predict(60, 60, "negative", False, True, api_name="/sam_point")
    assert more["box"] == refined["box"] and more["labels"] == [0]
    with pytest.raises(AppError, match="row number in"):
        c.predict(len(table["data"]), api_name="/refine_detection")


def test_embedded_detector_finds_shapes_in_a_sample(served: str, hub, tmp_path: Path) -> None:
    from detseg.serve.handlers import write_samples

    if "builtin" not in hub.names:
        pytest.skip("the embedded default detector is not packaged yet")
    c = _client(served)
    c.predict(handle_file(str(write_samples(tmp_path, 1)[0])), api_name="/load_image")
    _, table, coco_json, _ = c.predict("builtin", 0.25, 0.45, 100, api_name="/detect")
    from detseg.data.shapes import CLASSES

    assert table["data"] and {row[1] for row in table["data"]} <= set(CLASSES)
    records = json.loads(Path(coco_json).read_text())
    assert all("segmentation" in r for r in records)  # a segmentation model: masks as RLE
    assert all(row[7] > 0 for row in table["data"])


def test_sessions_are_isolated(served: str, coco_images) -> None:
    a, b = _client(served), _client(served)
    a.predict(handle_file(str(coco_images[0])), api_name="/load_image")
    b.predict(handle_file(str(coco_images[1])), api_name="/load_image")
    _, _, sa, _ = a.predict(100, 100, "positive", True, False, api_name="/sam_point")
    _, _, sb, _ = b.predict(api_name="/sam_clear")
    assert sa["image"] == coco_images[0].name and sa["steps"] == 1
    assert sb["image"] == coco_images[1].name and sb["steps"] == 0
    fresh = _client(served)
    with pytest.raises(AppError, match="upload an image"):
        fresh.predict(10, 10, "positive", True, False, api_name="/sam_point")


def _big_png(path: Path, w: int, h: int) -> Path:
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(path)
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: (d / "notes.png").write_bytes(b"hello, not an image") and d / "notes.png", "notes.png"),
        (lambda d: (d / "empty.jpg").write_bytes(b"") or d / "empty.jpg", "empty"),
        (lambda d: _big_png(d / "huge.png", 2100, 2000), "pixel"),
    ],
    ids=["not-an-image", "empty", "too-many-pixels"],
)
def test_bad_uploads_give_a_message_and_the_server_lives_on(
    served: str, tmp_path: Path, coco_images, make, message
) -> None:
    c = _client(served)
    c.predict(handle_file(str(coco_images[0])), api_name="/load_image")
    with pytest.raises(AppError, match=message):
        c.predict(handle_file(str(make(tmp_path))), api_name="/load_image")
    # the refused file replaced the earlier image: nothing runs on the old one any more
    with pytest.raises(AppError, match="no image loaded"):
        c.predict(None, 0.3, 0.5, 10, api_name="/detect")
    *_, status = c.predict(handle_file(str(coco_images[1])), api_name="/load_image")
    assert coco_images[1].name in status


def test_upload_over_the_size_limit_is_refused(served: str, tmp_path: Path) -> None:
    noisy = np.random.default_rng(0).integers(0, 256, (1000, 1000, 3), np.uint8)
    path = tmp_path / "noisy.png"
    Image.fromarray(noisy).save(path)
    assert path.stat().st_size > 2_000_000  # the test app's limit
    with pytest.raises(Exception, match="(?i)size|large|413"):
        _client(served).predict(handle_file(str(path)), api_name="/load_image")


@pytest.mark.parametrize(
    ("endpoint", "args", "message"),
    [("/sam_point", (99999, 5, "positive", True, False), "expected x in"),
     ("/sam_point", (5, 5, "sideways", True, False), "not in the list of choices"),
     ("/sam_box", (5, 5, 5, 90, False, False), "at least 1 pixel"),
     ("/sam_choose", (7,), "index in"),
     ("/detect", ("not-a-model", 0.3, 0.5, 10), "not in the list of choices"),
     ("/detect", (None, 1.5, 0.5, 10), "greater than maximum")],
)
def test_bad_requests_are_explained(served: str, coco_images, endpoint, args, message) -> None:
    c = _client(served)
    c.predict(handle_file(str(coco_images[0])), api_name="/load_image")
    c.predict(100, 100, "positive", True, False, api_name="/sam_point")
    with pytest.raises(AppError, match=message):
        c.predict(*args, api_name=endpoint)


def test_auth_is_required_when_set(hub, tmp_path: Path) -> None:
    from detseg.serve.app import ServeOptions, build_app, launch, make_context
    from detseg.serve.limits import Limits
    from tests.serve.conftest import free_port

    ctx = make_context(hub, Limits(), tmp_path)
    demo = build_app(ctx)
    url = launch(demo, ctx, port=free_port(), auth=("ann", "s3cret"), options=ServeOptions(),
                 block=False, quiet=True)
    try:
        import urllib.error
        import urllib.request

        with pytest.raises(urllib.error.HTTPError, match="401"):
            urllib.request.urlopen(url + "config")  # noqa: S310 - loopback
        with urllib.request.urlopen(url) as r:  # noqa: S310 - the login page itself loads
            assert r.status == 200
        with pytest.raises(Exception):  # noqa: B017 - any refusal will do
            _client(url).view_api(return_format="dict", print_info=False)
        with pytest.raises(Exception):  # noqa: B017
            _client(url, auth=("ann", "wrong"))
        api = _client(url, auth=("ann", "s3cret")).view_api(return_format="dict", print_info=False)
        assert "/sam_point" in api["named_endpoints"]
    finally:
        demo.close()
