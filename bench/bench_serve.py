"""Benchmark `detseg serve`: click-to-mask latency through the API, and a loopback load test.

Starts ``detseg serve`` (the embedded default models unless --sam-encoder/--sam-decoder are
given) as a subprocess on 127.0.0.1, then:

1. latency: one gradio_client session loads an image (the embedding is computed then), and
   clicks N times at random points (positive clicks, cleared every 4 so prompts stay small).
   Each click is timed end to end: request, queue, decoder, drawing, JPEG, response, and
   the download of the overlay image. Baselines measured in the same run, in this process
   on the same ONNX files: ``SamPredictor.predict`` alone (the decoder with a cached
   embedding), and ``set_image`` + ``predict`` without the cache (what a click would cost if
   the encoder ran each time).
2. load: C concurrent clients (each its own session and image) click for D seconds. Reports
   requests, errors, latency under load, throughput, and the server's RSS over time.
3. concurrent sessions (``--sessions 8``): every session loads its own image, then all click
   at once (``--session-clicks`` each); and the same with one of them uploading images
   (encoder runs) while the others click. Reports click p50/p95. With ``--baseline-root
   DIR`` (another checkout, e.g. main before the shared-embedding change) the same phase
   runs first against a server started from DIR, and the ratios are printed.

3. evaluate (``--evaluate``, run alone): the Evaluate tab on a 5,000-image synthetic set
   (36k ground truths, two results files of 500k detections each, A and B). Times start-up
   (``detseg serve --gt --pred A --pred B`` until the page answers) against evaluating the
   two files alone in this process, then a filter change and moving between images through
   the REST API (request, both pictures drawn and encoded, both downloaded), against the
   same work done in this process without the server (the baseline); and a change of the
   IoU threshold, the first time at a threshold and at one seen before.
   ``--evaluate-segm``, run alone: one move on a segm evaluation drawing the masks' outlines
   (first visit, visited before) against drawing the boxes only, in this process.

    .venv/bin/python bench/bench_serve.py [--clicks 200] [--clients 8] [--duration 60]
    .venv/bin/python bench/bench_serve.py --evaluate [--eval-images 5000] [--steps 100]
    .venv/bin/python bench/bench_serve.py --evaluate-segm [--segm-images 300] [--steps 100]

    .venv/bin/python bench/bench_serve.py --only-sessions --baseline-root /tmp/base
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) * 1000.0


def stop_server(proc: subprocess.Popen) -> None:
    """Terminate a server started here; kill it if it does not stop within 30 s."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def start_server(port: int, args: argparse.Namespace, root: Path = ROOT) -> subprocess.Popen:
    """`detseg serve` from the checkout ``root`` (its own code first on the path)."""
    cmd = [sys.executable, "-m", "detseg", "serve", "--port", str(port),
           "--concurrency", str(args.concurrency)]
    if args.sam_encoder:
        cmd += ["--sam-encoder", args.sam_encoder, "--sam-decoder", args.sam_decoder]
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(root))
    proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"detseg serve exited:\n{proc.stdout.read()}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)  # noqa: S310
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("detseg serve did not start")


def sample_images(folder: Path, n: int) -> list[Path]:
    from detseg.serve.handlers import write_samples

    return write_samples(folder, n)


def click_points(rng: np.random.Generator, size: tuple[int, int], n: int) -> np.ndarray:
    h, w = size
    return np.stack([rng.uniform(0, w - 1, n), rng.uniform(0, h - 1, n)], axis=1)


class RawSession:
    """Gradio's documented REST API (POST /gradio_api/call/NAME, then its SSE result), in the
    session of a gradio_client ``Client`` so that the image it loaded is the one clicked.

    gradio_client itself polls for results every 50 ms, which would dominate a ~10 ms click;
    this client reads the event stream directly, as the browser does, and downloads the
    overlay image the page would show.
    """

    def __init__(self, url: str, session_hash: str) -> None:
        import httpx

        self.http = httpx.Client(base_url=url, timeout=120)
        self.session_hash = session_hash

    def call(self, api: str, *data, download: bool = True) -> list:
        r = self.http.post(f"gradio_api/call/{api}", json={"data": list(data), "session_hash": self.session_hash})
        r.raise_for_status()
        event_id = r.json()["event_id"]
        event, payload = None, None
        with self.http.stream("GET", f"gradio_api/call/{api}/{event_id}") as stream:
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:") and event in ("complete", "error"):
                    payload = json.loads(line[5:])
                    break
        if event != "complete":
            raise RuntimeError(f"{api}: {event}: {payload}")
        if download and isinstance(payload[0], dict) and payload[0].get("url"):
            self.http.get(payload[0]["url"]).raise_for_status()
        return payload


def session_clicks(session, points: np.ndarray, stop: threading.Event | None = None):
    """Click at ``points`` (clearing every 4 clicks); yields (seconds, error or None).

    ``session`` is a `RawSession` or a gradio_client ``Client``.
    """
    raw = isinstance(session, RawSession)
    for i, (x, y) in enumerate(points):
        if stop is not None and stop.is_set():
            return
        args = (float(x), float(y), "positive", True, False)
        t0 = time.perf_counter()
        try:
            if i % 4 == 0:
                session.call("sam_clear", download=False) if raw else session.predict(api_name="/sam_clear")
                t0 = time.perf_counter()
            out = session.call("sam_point", *args) if raw else session.predict(*args, api_name="/sam_point")
            summary = next(o for o in out if isinstance(o, dict) and "steps" in o)
            if summary["steps"] != i % 4 + 1:  # the session state really is this session's
                raise RuntimeError(f"expected step {i % 4 + 1}, server says {summary['steps']}")
            yield time.perf_counter() - t0, None
        except Exception as exc:  # noqa: BLE001 - counted and reported
            yield time.perf_counter() - t0, repr(exc)


def direct_baselines(image: np.ndarray, points: np.ndarray, sam_paths) -> tuple[list, list]:
    from detseg.pipeline.sam import SamPredictor

    cached = SamPredictor.load(*sam_paths, device="cpu")
    cached.set_image(image)
    dec, full = [], []
    for x, y in points:
        t0 = time.perf_counter()
        cached.predict(np.array([[x, y]], np.float32), np.array([1]), multimask_output=True)
        dec.append(time.perf_counter() - t0)
    for x, y in points[: max(10, len(points) // 5)]:
        fresh = SamPredictor.load(*sam_paths, device="cpu", cache_size=1)
        t0 = time.perf_counter()
        fresh.set_image(image)
        fresh.predict(np.array([[x, y]], np.float32), np.array([1]), multimask_output=True)
        full.append(time.perf_counter() - t0)
    return dec, full


def rss_sampler(pid: int, stop: threading.Event, out: list, every: float = 2.0) -> None:
    import psutil

    proc = psutil.Process(pid)
    t0 = time.monotonic()
    while not stop.is_set():
        rss = proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
        out.append((time.monotonic() - t0, rss / 2**20))
        stop.wait(every)


# ---- 3. the Evaluate tab ---------------------------------------------------------------------
def eval_inputs(folder: Path, n_images: int) -> tuple[Path, Path, Path]:
    """A COCO-scale problem (GT + results A) and a worse copy B, with images on disk.

    16 distinct 640x480 JPEGs are hard-linked under the 5,000 file names: reading them costs
    what reading real images of that size costs (from the page cache), without 5,000 files'
    worth of disk.
    """
    import cv2

    from tests.eval.synthetic import make_large_problem

    gt, res = make_large_problem(seed=0, n_images=n_images)
    rng = np.random.default_rng(1)
    jit = rng.normal(0, 4, (len(res), 2)).round(2).tolist()
    res_b = [dict(r, bbox=[r["bbox"][0] + j[0], r["bbox"][1] + j[1], *r["bbox"][2:]])
             for r, j in zip(res, jit, strict=True)]
    (folder / "images").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:480, 0:640]
    srcs = []
    for k in range(16):
        img = np.stack([(xx * (k + 1)) % 256, (yy * 3 + 40 * k) % 256, (xx + yy) % 256], -1).astype(np.uint8)
        img = cv2.GaussianBlur(img, (0, 0), 3) + rng.integers(0, 20, img.shape, dtype=np.uint8)
        path = folder / f"src_{k}.jpg"
        cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        srcs.append(path)
    for i, im in enumerate(gt["images"]):
        dst = folder / "images" / im["file_name"]
        if not dst.exists():
            os.link(srcs[i % 16], dst)
    paths = folder / "gt.json", folder / "a.json", folder / "b.json"
    for path, data in zip(paths, (gt, res, res_b), strict=True):
        path.write_text(json.dumps(data))
    return paths


def payload_files(http, payload) -> None:
    """Download every file a response points at (the pictures the page would show)."""
    if isinstance(payload, dict):
        if isinstance(payload.get("url"), str):
            http.get(payload["url"]).raise_for_status()
        for v in payload.values():
            if isinstance(v, (dict, list)):
                payload_files(http, v)
    elif isinstance(payload, list):
        for v in payload:
            payload_files(http, v)


def bench_evaluate(args: argparse.Namespace) -> None:
    import cv2
    from gradio_client import Client

    from detseg.eval import browse, evaluate
    from detseg.serve import evalset as es_mod

    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-eval-"))
    t0 = time.perf_counter()
    gt, a, b = eval_inputs(tmp, args.eval_images)
    print(f"inputs: {args.eval_images} images, written in {time.perf_counter() - t0:.1f} s "
          f"(GT {gt.stat().st_size / 2**20:.0f} MB, each results file {a.stat().st_size / 2**20:.0f} MB)")

    # baselines, in this process: the metrics alone, then what the tab computes at load
    evaluate(gt, a)  # warm-up (imports, first-touch allocations)
    t0 = time.perf_counter()
    for pred in (a, b):
        evaluate(gt, pred)
    metrics_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    es = es_mod.load_evalset(gt, [a, b])
    load_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    direct = []
    r0 = es.runs[0]
    order = browse.select_images(r0.outcomes, es.gt.cat, 0.3)
    for j in order[: args.steps].tolist():
        t0 = time.perf_counter()
        image, found = es_mod.read_image_or_blank(es, j)
        for r in es.runs:
            v = browse.image_view(r.ev, r.outcomes, j, 0.3)
            cv2.imencode(".jpg", es_mod.draw_view(image, v, es.cat_names, found=found))
        direct.append(time.perf_counter() - t0)

    port = free_port()
    cmd = [sys.executable, "-m", "detseg", "serve", "--port", str(port), "--gt", str(gt),
           "--pred", str(a), "--pred", str(b)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_http(proc, url)
        start_s = time.perf_counter() - t0
        client = Client(url, verbose=False)
        raw = RawSession(url, client.session_hash)

        def timed(api: str, *data) -> float:
            t = time.perf_counter()
            payload = raw.call(api, *data, download=False)
            payload_files(raw.http, payload)
            return time.perf_counter() - t

        cats = es.cat_names
        filters = [("all classes", "any", 0.3, 0.5)] + [
            (cats[int(rng.integers(len(cats)))], e, float(s), 0.5)
            for e, s in (("FP", 0.3), ("FN", 0.5), ("localisation", 0.1), ("missed", 0.3), ("any", 0.05))]
        timed("eval_filter", *filters[0])  # warm-up
        t_filter = [timed("eval_filter", *f) for f in filters]
        # the IoU threshold: the first move to a threshold computes its outcomes and TIDE for
        # A and B; moving back to one already seen only looks up
        t_iou_first = [timed("eval_filter", "all classes", "any", 0.3, t) for t in (0.75, 0.9)]
        t_iou_again = [timed("eval_filter", "all classes", "any", 0.3, t) for t in (0.5, 0.75, 0.9) * 2]
        timed("eval_filter", "all classes", "any", 0.3, 0.5)
        for _ in range(5):
            timed("eval_next")  # warm-up
        t_next = [timed("eval_next") for _ in range(args.steps)]
        t_prev = [timed("eval_prev") for _ in range(max(10, args.steps // 5))]
        ids = rng.choice(es.gt.image_ids, max(10, args.steps // 5))
        t_show = [timed("eval_show", int(i)) for i in ids]
    finally:
        stop_server(proc)

    print(f"start-up: evaluating A and B in this process (metrics only) {metrics_s:.2f} s; "
          f"the tab's load (metrics + per-image outcomes + TIDE, images found) {load_s:.2f} s "
          f"({load_s / metrics_s:.2f}x); detseg serve until the page answers {start_s:.1f} s")
    print(f"{'Evaluate tab, A and B side by side':44s} {'p50 ms':>8s} {'p95 ms':>8s} {'n':>5s}")
    for name, vals in (("next image, API over HTTP (this)", t_next),
                       ("previous image, API over HTTP", t_prev),
                       ("show image by id, API over HTTP", t_show),
                       ("filter change (tables, PR, list, image)", t_filter),
                       ("IoU change, first time at that threshold", t_iou_first),
                       ("IoU change, threshold seen before", t_iou_again),
                       ("direct: read + 2x view + draw + JPEG (baseline)", direct)):
        print(f"{name:44s} {pct(vals, 50):8.1f} {pct(vals, 95):8.1f} {len(vals):5d}")
    print(f"ratio next-image p50 / direct p50: {pct(t_next, 50) / pct(direct, 50):.2f}x")
    print(f"target: moving between images well under a second (p95 <= 500 ms): "
          f"{'met' if pct(t_next, 95) <= 500 and pct(t_prev, 95) <= 500 else 'NOT met'}")


def bench_evaluate_segm(args: argparse.Namespace) -> None:
    """In process: one move of the Evaluate tab on a segm evaluation (masks drawn as outlines)
    against the same move drawing boxes only (baseline), on 640x480 images."""
    import cv2

    from detseg.eval import browse
    from detseg.serve import evalset as es_mod
    from tests.eval.synthetic import make_problem

    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-segm-"))
    gt, res = make_problem(seed=4, n_images=args.segm_images, n_cats=10, gt_per_image=8,
                           dets_per_image=40, segm=True, image_size=(480, 640))
    (tmp / "gt.json").write_text(json.dumps(gt))
    (tmp / "res.json").write_text(json.dumps(res))
    t0 = time.perf_counter()
    es = es_mod.load_evalset(tmp / "gt.json", [tmp / "res.json"], "segm")
    load_s = time.perf_counter() - t0
    r = es.runs[0]
    order = browse.select_images(r.outcomes, es.gt.cat, 0.3)[: args.steps].tolist()
    image = np.full((480, 640, 3), 90, np.uint8)

    def move(j: int, outlines: bool) -> float:
        t = time.perf_counter()
        v = browse.image_view(r.ev, r.outcomes, j, 0.3)
        g, d = es_mod.view_outlines(es, 0, v) if outlines else (None, None)
        cv2.imencode(".jpg", es_mod.draw_view(image, v, es.cat_names, gt_outlines=g, det_outlines=d))
        return time.perf_counter() - t

    boxes = [move(j, False) for j in order]
    first = [move(j, True) for j in order]  # masks traced (RLE decoded) on the first visit
    again = [move(j, True) for j in order]  # kept on the evaluation set
    shown = np.mean([len(browse.image_view(r.ev, r.outcomes, j, 0.3).det_box) for j in order])
    print(f"segm: {len(gt['images'])} images, {len(res)} RLE results, ~{shown:.0f} shown per "
          f"image at score >= 0.3; load {load_s:.1f} s")
    print(f"{'Evaluate tab, segm, in process (one run)':44s} {'p50 ms':>8s} {'p95 ms':>8s} {'n':>5s}")
    for name, vals in (("view + draw boxes only + JPEG (baseline)", boxes),
                       ("view + outlines, first visit (RLE traced)", first),
                       ("view + outlines, visited before", again)):
        print(f"{name:44s} {pct(vals, 50):8.1f} {pct(vals, 95):8.1f} {len(vals):5d}")
    print(f"ratio outlines first visit / boxes p50: {pct(first, 50) / pct(boxes, 50):.2f}x; "
          f"visited before: {pct(again, 50) / pct(boxes, 50):.2f}x")


def wait_http(proc: subprocess.Popen, url: str, limit_s: float = 600) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"detseg serve exited:\n{proc.stdout.read()}")
        try:
            urllib.request.urlopen(url, timeout=5)  # noqa: S310
            return
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("detseg serve did not start")

def concurrent_sessions(
    url: str, images: list[Path], n: int, clicks: int, size: tuple[int, int], uploader: bool
) -> tuple[list[float], list[str], float, int]:
    """``n`` sessions, each with its own image, click ``clicks`` times all at once.

    With ``uploader`` the last session uploads images in a loop instead (an encoder run each),
    as a new user arriving while the others click. Returns (click seconds, errors, wall
    seconds of the clicking, uploads done meanwhile).
    """
    from gradio_client import Client, handle_file

    sessions = []
    for k in range(n):
        c = Client(url, verbose=False)
        c.predict(handle_file(str(images[k % len(images)])), api_name="/load_image")
        sessions.append(RawSession(url, c.session_hash))
    clickers = sessions[:-1] if uploader else sessions
    start = threading.Barrier(len(sessions) + 1)
    done = threading.Event()
    lat: list[list[float]] = [[] for _ in clickers]
    errs: list[str] = []
    uploads = [0]

    def click(k: int) -> None:
        pts = click_points(np.random.default_rng(100 + k), size, clicks)
        start.wait()
        for t, e in session_clicks(clickers[k], pts):
            (lat[k].append(t) if e is None else errs.append(e))

    def upload() -> None:
        c = Client(url, verbose=False)
        start.wait()
        i = 0
        while not done.is_set():
            # a different image each time: a real encoder run, not the predictor's cache
            c.predict(handle_file(str(images[(n + i) % len(images)])), api_name="/load_image")
            uploads[0] += 1
            i += 1

    threads = [threading.Thread(target=click, args=(k,), daemon=True) for k in range(len(clickers))]
    if uploader:
        threads.append(threading.Thread(target=upload, daemon=True))
    for t in threads:
        t.start()
    start.wait()
    t0 = time.monotonic()
    for t in threads[: len(clickers)]:
        t.join()
    wall = time.monotonic() - t0
    done.set()
    for t in threads[len(clickers):]:
        t.join(timeout=120)
    return [x for xs in lat for x in xs], errs, wall, uploads[0]


def sessions_phase(url: str, images: list[Path], args: argparse.Namespace, size) -> dict[str, list[float]]:
    """Both concurrent-session scenarios on the server at ``url``; prints and returns latencies."""
    out = {}
    for uploader in (False, True):
        name = (f"{args.sessions - 1} sessions click, 1 uploads" if uploader
                else f"{args.sessions} sessions click at once")
        lat, errs, wall, ups = concurrent_sessions(
            url, images, args.sessions, args.session_clicks, size, uploader)
        extra = f", {ups} uploads meanwhile" if uploader else ""
        print(f"  {name:34s} p50 {pct(lat, 50):7.1f} ms  p95 {pct(lat, 95):7.1f} ms  "
              f"n {len(lat)}  errors {len(errs)}  {len(lat) / wall:.1f} clicks/s{extra}")
        if errs:
            print("    first errors:", *sorted(set(errs))[:3], sep="\n      ")
        out[name] = lat
    return out


def run_sessions(args: argparse.Namespace, images: list[Path], size, url: str | None) -> None:
    results = {}
    roots = ([("baseline", Path(args.baseline_root))] if args.baseline_root else []) + [("this", ROOT)]
    for label, root in roots:
        print(f"\nconcurrent sessions, server from {root} ({label}), "
              f"{args.session_clicks} clicks per session, server concurrency {args.concurrency}:")
        if label == "this" and url is not None:
            results[label] = sessions_phase(url, images, args, size)
            continue
        port = free_port()
        proc = start_server(port, args, root)
        try:
            results[label] = sessions_phase(f"http://127.0.0.1:{port}/", images, args, size)
        finally:
            stop_server(proc)
    if "baseline" in results:
        print("\nratio baseline / this (higher: this is faster):")
        for name, lat in results["this"].items():
            base = results["baseline"][name]
            print(f"  {name:34s} p50 {pct(base, 50) / pct(lat, 50):5.2f}x  "
                  f"p95 {pct(base, 95) / pct(lat, 95):5.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clicks", type=int, default=200)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--image", type=Path, help="image for the latency phase (default: a shapes sample)")
    ap.add_argument("--sessions", type=int, default=8, help="concurrent sessions (phase 3)")
    ap.add_argument("--session-clicks", type=int, default=40, help="clicks per session (phase 3)")
    ap.add_argument("--baseline-root", help="checkout to run phase 3 against first, for a ratio")
    ap.add_argument("--only-sessions", action="store_true", help="run phase 3 only")
    ap.add_argument("--sam-encoder")
    ap.add_argument("--sam-decoder")
    ap.add_argument("--evaluate", action="store_true", help="run only section 3, the Evaluate tab")
    ap.add_argument("--eval-images", type=int, default=5000)
    ap.add_argument("--steps", type=int, default=100, help="images browsed in section 3")
    ap.add_argument("--evaluate-segm", action="store_true",
                    help="run only the Evaluate tab's segm drawing (outlines vs boxes, in process)")
    ap.add_argument("--segm-images", type=int, default=300)
    args = ap.parse_args()
    if args.evaluate:
        bench_evaluate(args)
        return
    if args.evaluate_segm:
        bench_evaluate_segm(args)
        return

    from gradio_client import Client, handle_file

    from detseg.serve.limits import Limits, read_upload

    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    # phase 3 uploads a different image each time (the predictor caches 16 embeddings)
    images = sample_images(tmp, max(args.clients, args.sessions + 40, 1))
    first = args.image or images[0]
    image = read_upload(first, first.name, Limits())
    sam_paths = (args.sam_encoder, args.sam_decoder) if args.sam_encoder else None
    if sam_paths is None:
        from detseg.weights.builtin import default_sam

        sam_paths = default_sam()
    rng = np.random.default_rng(0)
    points = click_points(rng, image.shape[:2], args.clicks)

    if args.only_sessions:
        run_sessions(args, images, image.shape[:2], None)
        return
    port = free_port()
    proc = start_server(port, args)
    url = f"http://127.0.0.1:{port}/"
    try:
        # ---- 1. latency -------------------------------------------------------------------
        client = Client(url, verbose=False)
        t0 = time.perf_counter()
        client.predict(handle_file(str(first)), api_name="/load_image")
        load_s = time.perf_counter() - t0
        raw = RawSession(url, client.session_hash)
        list(session_clicks(raw, points[:8]))  # warm-up
        results = list(session_clicks(raw, points))
        lat = [t for t, e in results if e is None]
        errors = [e for _, e in results if e is not None]
        via_client = list(session_clicks(client, points[: max(20, len(points) // 4)]))
        lat_client = [t for t, e in via_client if e is None]
        errors += [e for _, e in via_client if e is not None]
        dec, full = direct_baselines(image, points, sam_paths)
        print(f"image {first.name} {image.shape[1]}x{image.shape[0]}; upload + embedding {load_s * 1000:.0f} ms")
        print(f"{'click-to-mask':40s} {'p50 ms':>8s} {'p95 ms':>8s} {'n':>5s}")
        for name, vals in (("API over HTTP, cached embedding (this)", lat),
                           ("same via gradio_client (50 ms polling)", lat_client),
                           ("direct predict, cached (baseline)", dec),
                           ("direct set_image+predict, no cache", full)):
            print(f"{name:40s} {pct(vals, 50):8.1f} {pct(vals, 95):8.1f} {len(vals):5d}")
        print(f"ratio API p50 / direct decoder p50: {pct(lat, 50) / pct(dec, 50):.2f}x")
        print(f"ratio no-cache p50 / API p50: {pct(full, 50) / pct(lat, 50):.2f}x "
              f"(what caching the embedding saves per click)")
        print(f"target p50 <= 100 ms: {'met' if pct(lat, 50) <= 100 else 'NOT met'}; errors: {len(errors)}")

        # ---- 2. load ----------------------------------------------------------------------
        stop = threading.Event()
        rss: list[tuple[float, float]] = []
        sampler = threading.Thread(target=rss_sampler, args=(proc.pid, stop, rss), daemon=True)
        per_client: list[list[tuple[float, str | None]]] = [[] for _ in range(args.clients)]

        def worker(k: int) -> None:
            c = Client(url, verbose=False)
            img = images[k % len(images)]
            c.predict(handle_file(str(img)), api_name="/load_image")
            raw_k = RawSession(url, c.session_hash)
            pts = click_points(np.random.default_rng(k + 1), image.shape[:2], 1000)
            while not stop.is_set():
                for item in session_clicks(raw_k, pts, stop):
                    per_client[k].append(item)

        sampler.start()
        threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(args.clients)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        time.sleep(args.duration)
        stop.set()
        for t in threads:
            t.join(timeout=120)
        wall = time.monotonic() - t0
        sampler.join(timeout=10)
        all_items = [it for items in per_client for it in items]
        ok = [t for t, e in all_items if e is None]
        errs = [e for _, e in all_items if e is not None]
        print(f"\nload: {args.clients} clients x {args.duration:.0f} s, server concurrency {args.concurrency}")
        print(f"requests {len(all_items)}, errors {len(errs)}, throughput {len(ok) / wall:.1f} clicks/s")
        if ok:
            print(f"latency under load: p50 {pct(ok, 50):.0f} ms, p95 {pct(ok, 95):.0f} ms")
        if errs:
            print("first errors:", *sorted(set(errs))[:3], sep="\n  ")
        if rss:
            n = max(1, len(rss) // 5)
            head = statistics.mean(v for _, v in rss[:n])
            tail = statistics.mean(v for _, v in rss[-n:])
            print(f"server RSS MiB: first fifth {head:.0f}, last fifth {tail:.0f}, "
                  f"max {max(v for _, v in rss):.0f} (growth {100 * (tail - head) / head:+.1f} %)")
            step = max(1, len(rss) // 7)
            print("RSS over time (s: MiB):", ", ".join(f"{t:.0f}: {v:.0f}" for t, v in rss[::step]))

        # ---- 3. concurrent sessions --------------------------------------------------------
        run_sessions(args, images, image.shape[:2], url)
    finally:
        stop_server(proc)


if __name__ == "__main__":
    main()
