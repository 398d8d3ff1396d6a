"""The Dask side of whole-slide inference: clusters, the per-worker model, and the infer.py entry.

``--workers N`` starts an embedded :class:`distributed.LocalCluster` of N single-threaded worker processes
(one GPU each with ``--gpu 0,1,...``); ``--scheduler ADDRESS`` connects to an existing cluster instead
(dask-jobqueue on SLURM, dask-kubernetes...), whose workers must see the project, the model file, the
slides and the output folder at the same paths. Tiles of all slides are the tasks. Each worker process
builds the network once (:class:`ModelFactory` through :func:`src.infer.slides.cached_predictor`) and keeps it.
Tasks write their part files themselves instead of returning nuclei to the client: results never pass
through the scheduler or pile up in the client, and a finished tile is on disk even if its worker or the
client dies; a worker that dies mid-tile loses only that tile, which the scheduler reruns elsewhere.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from distributed.diagnostics.plugin import WorkerPlugin

from misc.proc import die_with_parent, interrupts_deferred

log = logging.getLogger(__name__)

__all__ = ["DieWithParent", "WorkerLogs", "ModelFactory", "dask_client", "infer_slides"]

@dataclass(frozen=True)
class ModelFactory:
    """Picklable recipe for the TensorFlow predictor; called once in each worker process."""

    model_path: str
    overrides: tuple[str, ...] = ()
    verbose: bool = False  # infer.py --verbose: tensorpack's and TensorFlow's full logs on the console too
    log_file: str | None = None  # where the worker's full logs go (infer.py: <output>/infer.log)

    def __call__(self):
        import src  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
        from misc.logs import attach_log_file, setup_logging

        # a worker is a fresh process: without this it would print tensorpack's layer shapes and restored
        # variables (hundreds of lines) whatever the client's console settings
        setup_logging(self.verbose)
        if self.log_file is not None:
            attach_log_file(self.log_file)
        from src.infer.predictor import HoVerNetPredictor
        from src.model.weights_file import open_model

        # the network recorded with the weights (bundled .npz, run.json), then --config, as infer.py builds it;
        # the file is read once in this process
        return HoVerNetPredictor(open_model(self.model_path, self.overrides))


class DieWithParent(WorkerPlugin):
    """Worker plugin: each embedded worker process (restarted ones too) dies with the process that spawned it."""

    name = "hovernet-die-with-parent"

    def setup(self, worker) -> None:
        die_with_parent(os.getppid())


class WorkerLogs(WorkerPlugin):
    """Worker plugin: an embedded worker logs as the client does (quiet console, everything in ``log_file``), its
    own Dask messages included, which go to the file only: on the console they said again what the client reports
    once (a failed tile's "Compute Failed" and traceback beside infer.py's line for the slide), or nothing to act on
    (heartbeats to a scheduler closing under a run stopped while tiles run). ``verbose``: the console shows them."""

    name = "hovernet-worker-logs"

    def __init__(self, log_file: str, verbose: bool = False):
        self.log_file, self.verbose = log_file, verbose

    def setup(self, worker) -> None:
        from misc.logs import attach_log_file, setup_console, to_log_file_only

        setup_console(self.verbose)  # tensorpack's part comes with the model (ModelFactory)
        attach_log_file(self.log_file)
        if not self.verbose:
            to_log_file_only("distributed")


# The scheduler serves HTTP (health, metrics) even without a dashboard, by default on port 8787: beside any other Dask
# cluster on the machine (another run, the tests) it printed "Port 8787 is already in use. Perhaps you already have a
# cluster running? ..." on the console. A free port of this host instead, and still no dashboard.
_SCHEDULER_OPTIONS = {"dashboard": False, "dashboard_address": "localhost:0"}


@contextlib.contextmanager
def dask_client(workers: int = 1, scheduler: str | None = None, *, processes: bool = True,
                gpus: list[str] | None = None, worker_plugins: tuple[WorkerPlugin, ...] = ()):
    """A :class:`distributed.Client`: on ``scheduler`` if given, else on an embedded cluster closed on exit.

    ``processes=False`` runs the workers as threads of this process (tests; a predictor shared between
    threads). ``gpus``: one worker per listed id, each seeing only its GPU (``CUDA_VISIBLE_DEVICES``).
    ``worker_plugins``: set up in each embedded worker process as it starts, after :class:`DieWithParent`.
    """
    from distributed import Client, LocalCluster, Nanny, Scheduler, SpecCluster

    quiet = logging.ERROR
    logging.getLogger("distributed").setLevel(logging.WARNING)  # its INFO lines would bury the progress bars
    if scheduler:
        with Client(scheduler) as client:
            log.info("using the Dask cluster at %s (%d workers)", scheduler,
                     len(client.scheduler_info().get("workers", {})))
            yield client
        return
    # Given to the workers' constructors, not registered through the scheduler: set up before a worker takes a task
    # (a restarted one too), and no broadcast in flight for an interrupt to cut (Dask then printed its failure).
    plugins = (DieWithParent(), *worker_plugins) if processes else ()
    with contextlib.ExitStack() as stack:
        # A Ctrl-C or SIGTERM while the cluster starts (seconds: its workers are new processes) waits until it has
        # started, and then closes it, instead of leaving a half-made cluster to Dask's exit hook (a traceback).
        with interrupts_deferred():
            if gpus and processes:
                spec = {f"gpu{g}": {"cls": Nanny, "options": {"nthreads": 1, "env": {"CUDA_VISIBLE_DEVICES": g},
                                                               "silence_logs": quiet, "plugins": plugins}}
                        for g in gpus}
                cluster = SpecCluster(workers=spec, scheduler={"cls": Scheduler, "options": _SCHEDULER_OPTIONS},
                                      silence_logs=quiet)
            else:
                cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=processes,
                                       dashboard_address=None, scheduler_kwargs=_SCHEDULER_OPTIONS,
                                       silence_logs=quiet, plugins=plugins)
            stack.callback(cluster.close, timeout=30)
            client = stack.enter_context(Client(cluster))
        yield client


def tissue_mask_files(spec: str | None, slides: list[Path]) -> dict[str, Path]:
    """``--tissue_mask``: one image for a single slide, or a folder of ``<slide name>.png`` (others: automatic)."""
    if not spec:
        return {}
    from misc.io import InputError

    path = Path(spec)
    if path.is_dir():
        return {s.stem: path / f"{s.stem}.png" for s in slides if (path / f"{s.stem}.png").is_file()}
    if len(slides) != 1:
        raise InputError(f"--tissue_mask {spec}: one mask file fits one slide; give a folder of <slide name>.png "
                         f"masks for {len(slides)} slides")
    if not path.is_file():
        raise InputError(f"--tissue_mask {spec}: no such file or folder")
    return {slides[0].stem: path}


def infer_slides(slides: list[Path], out_dir, weights, type_info, run_info: dict, *, formats,
                 batch_size: int | None = None, gzip: bool = False, tissue_mask: str | None = None, workers: int = 1,
                 scheduler: str | None = None, gpus: list[str] | None = None, mpp: float | None = None,
                 overwrite: bool = False, progress: bool = True, verbose: bool = False):
    """infer.py's whole-slide branch: settings from ``weights.cfg``, a Dask client (``workers`` embedded processes,
    or the cluster at ``scheduler``; one per listed GPU id in ``gpus``), :func:`src.infer.slides.run_wsi`.

    ``weights``: the opened :class:`src.model.weights_file.ModelWeights`; each worker reopens its file once, and
    logs as the client does (quiet console unless ``verbose``; everything in ``<out_dir>/infer.log``).
    """
    from misc.io import remove_stale_temporaries, write_json_atomic
    from src.infer.slides import PARTS_SUFFIX, WsiReport, WsiSettings, run_wsi, slide_complete
    from src.infer.tiles import RUN_INFO_NAME

    settings = WsiSettings.from_config(weights.cfg, batch_size=batch_size, formats=formats, gzip_geojson=gzip)
    masks = tissue_mask_files(tissue_mask, slides)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / RUN_INFO_NAME, run_info, indent=1, sort_keys=True, newline=True)
    if not overwrite and all(slide_complete(out_dir, s.stem, settings) for s in slides):
        return WsiReport(already_complete=[s.stem for s in slides])  # no cluster: it would spawn its workers
    log_file = str((out_dir / "infer.log").resolve())
    factory = ModelFactory(str(Path(weights.path).resolve()), tuple(weights.overrides), verbose, log_file)
    try:
        # (worker plugins are for the embedded workers: those of a cluster of others keep their own logging)
        with dask_client(workers, scheduler, gpus=gpus, worker_plugins=(WorkerLogs(log_file, verbose),)) as client:
            return run_wsi(slides, out_dir, factory, type_info, settings, client=client, overwrite=overwrite,
                           mpp=mpp, tissue_masks=masks, progress=progress)
    finally:
        if scheduler is None:
            # The embedded workers have stopped with the cluster (one busy with a tile is killed after a few
            # seconds), so a temporary left in a parts folder, theirs or this process's, is stale.
            for slide in slides:
                remove_stale_temporaries(out_dir / f"{slide.stem}{PARTS_SUFFIX}", own_too=True)
