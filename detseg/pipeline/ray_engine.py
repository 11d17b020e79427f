"""The Ray engine: a `PredictPlan` run on Ray Data, on this machine or a cluster.

    source paths (driver) -> read tasks: detseg's read_image -> actor pool: one Detector each
    (preprocess, infer, postprocess, COCO records) -> records stream back -> Recorder (journal)

Only the driver writes: the journal and the final results file live on the driver's disk,
exactly as under the local engine, so a run stopped under one engine resumes under the other.
Images are read and decoded in Ray tasks (a bad image gets `read_image`'s error text and is
reported and skipped); each actor holds one detector whose onnxruntime session gets
``intra_op_num_threads`` equal to the actor's CPUs (onnxruntime ignores Ray's
``OMP_NUM_THREADS``) and, with ``device="cuda"``, one GPU. Ray Data restarts an actor whose
process dies and retries its batches; an image reported twice is journaled once.

Sizing (`size_actors`): an actor never takes a whole node, so the read tasks always find CPU
(with ``ray.init(num_cpus=2)``, two actors of 1 CPU each would starve them: the job hangs).

``ray`` is imported here only, and only when a run starts: it is the optional extra
``detseg[ray]``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from detseg import errors
from detseg.errors import DetsegError, EngineError
from detseg.pipeline.journal import records_json
from detseg.pipeline.plan import (
    BatchDetector,
    DetectorLoader,
    PredictPlan,
    Recorder,
    preprocess_apart,
    read_item,
)

READ_CPUS = 0.25  #: CPUs a read task asks Ray for; every node keeps at least this much free
CONNECT_TIMEOUT_S = 20.0  #: a cluster address that does not answer within this is an error
_ROWS_PER_BLOCK_BATCHES = 4  # source rows per Ray block, in batches


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise EngineError(
            f"--engine ray needs Ray Data, which is not installed ({exc}); install the extra: "
            "pip install 'detseg[ray]'"
        ) from None
    return ray


# ---- sizing ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ActorSize:
    """Resources of one detector actor: Ray's accounting and the session's threads."""

    actors: int
    num_cpus: float
    num_gpus: float
    threads: int


def size_actors(node_cpus: list[float], actors: int | None = None, gpus: float = 0.0,
                cuda: bool = False) -> ActorSize:
    """How many actors, and how many CPUs each asks Ray for.

    The share ``s`` is the largest (to 0.01 CPU) such that

    - all actors fit at once: ``sum(floor(c / s) for c in node_cpus) >= actors`` (actors of
      one size: wherever Ray puts them, that many fit), and
    - the read tasks always find CPU: ``actors * s <= total - READ_CPUS * nodes``, so however
      the actors are placed, some node keeps `READ_CPUS` free (with ``num_cpus=2`` and two
      actors of 1 CPU each the read tasks never run: the job hangs).

    With ``cuda`` each actor also asks for one GPU (default: one actor per GPU) and at most
    one CPU. The session's threads are ``round(s)``, at least 1.

    Args:
        node_cpus: CPUs of each alive node.
        actors: wanted actors; None: one per GPU with ``cuda``, else one per 2 CPUs and at
            least 2 (on a CPU, two single-thread sessions beat one with both cores on small
            models: bench/bench_ray.py, bench/bench_predict.py).
        gpus: GPUs in the cluster.

    Raises:
        EngineError: too few CPUs (or GPUs) for the actors wanted.
    """
    cpus = [float(c) for c in node_cpus if c > 0]
    total = sum(cpus)
    if actors is None:
        actors = max(1, int(gpus)) if cuda else max(1, min(int(total), max(2, int(total // 2))))
    if cuda and gpus < actors:
        raise EngineError(f"--actors {actors} with --device cuda needs {actors} GPUs; the Ray "
                          f"cluster has {gpus:g}")
    budget = (total - READ_CPUS * len(cpus)) / actors
    fits = [c / k for c in cpus for k in range(1, actors + 1)]
    pack = max((f for f in fits if sum(math.floor(c / f + 1e-9) for c in cpus) >= actors),
               default=0.0)
    share = math.floor(min(budget, pack, 1.0 if cuda else math.inf) * 100) / 100
    if share < 0.05:
        raise EngineError(
            f"--actors {actors}: the Ray cluster's {total:g} CPUs on {len(cpus)} nodes leave "
            f"{max(share, 0):.2f} CPU per actor after reading; ask for fewer actors"
        )
    return ActorSize(int(actors), share, 1.0 if cuda else 0.0, max(1, int(share + 0.5)))


# ---- connecting -----------------------------------------------------------------------------
def _check_reachable(address: str) -> None:
    """A TCP connection to ``host:port`` within a few seconds, or a one-line error."""
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise EngineError(f"--ray-address {address}: expected host:port (or ray://host:port, "
                          "auto, local)")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except OSError as exc:
        raise EngineError(
            f"--ray-address {address}: cannot reach a Ray cluster there ({exc.strerror or exc}); "
            "check the address (`ray status` on the head node prints it) and that the port is open"
        ) from None


def _check_gcs(ray: Any, address: str) -> None:
    """Ask the GCS at ``address`` for its cluster id within `CONNECT_TIMEOUT_S` (ray.init
    itself waits minutes on an address where something else listens)."""
    result: list[Any] = []

    def probe() -> None:
        try:
            from ray._raylet import GcsClient

            result.append(GcsClient(address=address).cluster_id)
        except Exception as exc:  # noqa: BLE001 - reported below as one line
            result.append(exc)

    t = threading.Thread(target=probe, daemon=True, name="detseg-ray-probe")
    t.start()
    t.join(CONNECT_TIMEOUT_S)
    if not result or isinstance(result[0], Exception):
        why = f"no answer within {CONNECT_TIMEOUT_S:g} s" if not result else str(result[0])[:200]
        raise EngineError(f"--ray-address {address}: no Ray cluster answers there ({why}); "
                          "check the address (`ray status` on the head node prints it)")


def connect(address: str | None) -> bool:
    """Make sure this process is connected to a Ray cluster; True when this call connected
    (and the caller should disconnect at the end).

    None: a Ray already initialised here, else ``RAY_ADDRESS``, else a cluster started on this
    machine with ``ray start``, else a new local Ray with this machine's CPUs. ``"local"``
    always starts a new local Ray; ``"auto"`` must find a running cluster.

    Raises:
        EngineError: ray is not installed, or the address is wrong or does not answer (within
            about `CONNECT_TIMEOUT_S` seconds, never a hang).
    """
    ray = _import_ray()
    if ray.is_initialized():
        return False
    kw: dict[str, Any] = dict(include_dashboard=False, logging_level=logging.WARNING,
                              configure_logging=True)
    if address == "local":
        ray.init(num_cpus=os.cpu_count() or 1, **kw)
        return True
    if address is None and not os.environ.get("RAY_ADDRESS"):
        from ray._private.services import canonicalize_bootstrap_address

        try:
            found = canonicalize_bootstrap_address(None)
        except Exception:  # noqa: BLE001 - nothing found: start a local Ray
            found = None
        if found is None:
            ray.init(num_cpus=os.cpu_count() or 1, **kw)
            return True
        address = found
    if address is None or address == "auto":
        from ray._private.services import canonicalize_bootstrap_address

        try:
            address = canonicalize_bootstrap_address(address)
        except Exception as exc:  # noqa: BLE001 - "auto" found nothing
            raise EngineError(f"--ray-address auto: no running Ray cluster found ({exc}); start "
                              "one with `ray start --head`, or leave --ray-address out to "
                              "start a local Ray") from None
    _check_reachable(address)
    if not address.startswith("ray://"):
        _check_gcs(ray, address)
    try:
        # Ray Client (ray://) takes no local-node options
        ray.init(address=address, **({} if address.startswith("ray://") else kw))
    except Exception as exc:  # noqa: BLE001 - one line, whatever Ray raises
        raise EngineError(f"--ray-address {address}: cannot connect ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    return True


# ---- the two Ray stages ---------------------------------------------------------------------
def _read_batch(batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """Ray task: decode the images of a batch of rows ``{i, key, path}``."""
    images, errors = [], []
    for path in batch["path"]:
        image, reason = read_item(str(path))
        images.append(image if image is not None else np.zeros((1, 1, 3), np.uint8))
        errors.append(reason or "")
    return {"i": batch["i"], "key": batch["key"], "image": images,
            "error": np.array(errors, dtype=object)}


class DetectorActor:
    """Ray Data callable class: one detector per actor, loaded once (`ActorPoolStrategy`).

    Gets rows ``{i, key, image, error}``, returns rows ``{i, records, error}``: records as the
    journal's bytes (`records_json`), error the reason an image was skipped ("" if none).
    """

    def __init__(self, loader: DetectorLoader, threads: int, settings: dict,
                 categories: dict[int, int] | None):
        self.detector: BatchDetector = loader.load(threads=threads)
        self.detector.warmup()
        self.settings, self.categories = settings, categories

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        n = len(batch["i"])
        records: list[bytes] = [b""] * n
        errors = [str(e) for e in batch["error"]]
        groups: dict[Any, list[int]] = {}
        for j in range(n):
            if not errors[j]:
                groups.setdefault(self.detector.input_size_for(batch["image"][j].shape[:2]),
                                  []).append(j)
        for index in groups.values():
            tensor, transforms, kept, failed = preprocess_apart(
                self.detector, [batch["image"][j] for j in index])
            for k, reason in failed.items():
                errors[index[k]] = reason
            if not kept:
                continue
            try:
                dets = self.detector.postprocess(self.detector.infer(tensor), transforms,
                                                 **self.settings)
            except DetsegError as exc:  # the model itself fails: the driver ends the run
                fatal = np.array([f"{type(exc).__name__}\t{exc}"] * n, dtype=object)
                return {"i": batch["i"], "records": np.array([b""] * n, dtype=object),
                        "error": np.array(errors, dtype=object), "fatal": fatal}
            for k, det in zip(kept, dets, strict=True):
                j = index[k]
                key = json.loads(batch["key"][j])
                records[j] = records_json(det.to_coco(key, category_ids=self.categories))
        return {"i": batch["i"], "records": np.array(records, dtype=object),
                "error": np.array(errors, dtype=object),
                "fatal": np.array([""] * n, dtype=object)}


def _bound_actor(loader: DetectorLoader, threads: int, settings: dict,
                 categories: dict[int, int] | None) -> type:
    """`DetectorActor` with its arguments bound in the class itself: shipped with the class
    definition, so a restarted actor never depends on constructor arguments kept in Ray's
    object store (which Ray warns about on every run)."""

    class BoundDetectorActor(DetectorActor):
        def __init__(self) -> None:
            super().__init__(loader, threads, settings, categories)

    return BoundDetectorActor


# ---- the engine -----------------------------------------------------------------------------
class RayEngine:
    """Runs a plan on Ray Data: read tasks, then a pool of `DetectorActor`."""

    name = "ray"

    def __init__(self, loader: DetectorLoader, *, address: str | None = None,
                 actors: int | None = None, device: str = "auto"):
        _import_ray()  # a missing extra is an error before any work
        self.loader, self.address, self.actors, self.device = loader, address, actors, device
        self._started: bool | None = None  # None: not connected by start()
        self._start_s = 0.0

    def start(self) -> None:
        """Connect to (or start) Ray: see `connect`. Idempotent."""
        if self._started is None:
            t0 = time.perf_counter()
            self._started = connect(self.address)
            self._start_s = time.perf_counter() - t0

    def stop(self) -> None:
        """Disconnect from Ray if `start` connected (a Ray initialised by the caller stays)."""
        if self._started:
            _import_ray().shutdown()
        self._started = None

    def describe(self) -> BatchDetector:
        """The detector loaded on the driver's CPU, for its metadata (names, family, batch)."""
        return self.loader.load(threads=1, device="cpu")

    def run(self, plan: PredictPlan, recorder: Recorder) -> dict:
        """Run ``plan.todo`` on Ray; returns ``{"actors", "providers", "start_s"}``."""
        ray = _import_ray()
        self.start()
        start_s = self._start_s
        try:
            if not plan.todo:
                return {"actors": 0, "providers": [], "start_s": start_s}
            size = self._size(ray)
            quiet = logging.getLogger("ray.data")
            level = quiet.level
            quiet.setLevel(logging.ERROR)  # execution plans, progress-bar notes: not for users
            try:
                self._drain(ray, self._dataset(ray, plan, size), plan, recorder)
            finally:
                quiet.setLevel(level)
            return {"actors": size.actors, "providers": self._providers(size),
                    "start_s": start_s}
        finally:
            self.stop()

    def _size(self, ray: Any) -> ActorSize:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        cpus = [float(n.get("Resources", {}).get("CPU", 0)) for n in nodes]
        gpus = float(sum(n.get("Resources", {}).get("GPU", 0) for n in nodes))
        return size_actors([c for c in cpus if c > 0] or [0.0], self.actors, gpus,
                           cuda=self.device == "cuda")

    def _providers(self, size: ActorSize) -> list[str]:
        return (["CUDAExecutionProvider"] if size.num_gpus else []) + ["CPUExecutionProvider"]

    def _dataset(self, ray: Any, plan: PredictPlan, size: ActorSize) -> Any:
        from ray.data import ActorPoolStrategy, DataContext

        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        import pyarrow as pa  # installed with ray[data]

        bs = plan.batch_size
        # blocks of a few batches, but enough blocks that every actor gets work
        step = max(1, min(bs * _ROWS_PER_BLOCK_BATCHES,
                          math.ceil(len(plan.todo) / (2 * size.actors))))
        # Arrow columns, one small table per block: no Python dict per image on the driver.
        tables = [pa.table({"i": pa.array(range(o, min(o + step, len(plan.todo))), pa.int64()),
                            "key": [json.dumps(it.key) for it in plan.todo[o:o + step]],
                            "path": [str(it.path) for it in plan.todo[o:o + step]]})
                  for o in range(0, len(plan.todo), step)]
        ds = ray.data.from_arrow(tables)
        ds = ds.map_batches(_read_batch, batch_size=None, num_cpus=READ_CPUS)  # block by block
        return ds.map_batches(
            _bound_actor(self.loader, size.threads, plan.settings, plan.categories),
            compute=ActorPoolStrategy(size=size.actors),
            batch_size=min(bs, step), num_cpus=size.num_cpus, num_gpus=size.num_gpus,
        )

    def _drain(self, ray: Any, ds: Any, plan: PredictPlan, recorder: Recorder) -> None:
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                if batch["fatal"][0]:  # raised by the model in an actor: as the local engine
                    name, _, message = str(batch["fatal"][0]).partition("\t")
                    cls = getattr(errors, name, None)
                    raise (cls if isinstance(cls, type) and issubclass(cls, DetsegError)
                           else DetsegError)(message)
                for i, records, error in zip(batch["i"], batch["records"], batch["error"],
                                             strict=True):
                    item = plan.todo[int(i)]
                    if error:
                        recorder.fail(item, str(error))
                    else:
                        recorder.record(item, bytes(records))
        except ray.exceptions.RayError as exc:
            raise EngineError(f"the Ray job failed: {_first_error_line(str(exc))}; the journal "
                              "keeps every finished image: rerun to resume") from None


def _first_error_line(text: str) -> str:
    """The ``SomeError: message`` line of a remote traceback (Ray's own text around it is
    advice on retries), else its last line."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in lines:
        if re.match(r"^[\w.]+(Error|Exception): ", ln):
            return ln[:300]
    return (lines or [""])[-1][:300]
