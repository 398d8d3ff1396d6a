"""src/train/run_folder.py: what a phase folder holds, what a new start does with it, and where phase 2 starts, for both
trainers (train.py's TensorFlow checkpoints and xla_runner train's .npz epochs)."""
import json

import pytest

from misc.io import InputError
from src.config import config_from_args
from src.train.run_folder import (
    BEST_CHECKPOINT,
    FINISHED_MARKER,
    INIT_RECORD,
    RUN_HISTORY,
    RUN_RECORD,
    check_run_dir,
    inspect_run_dir,
    mark_finished,
    phase_checkpoints,
    phase_init_checkpoint,
    phase_start,
    prepare_run_dir,
    record_run,
)


def test_run_dir_states_and_refusals(tmp_path):
    run = tmp_path / "run"
    assert inspect_run_dir(run).kind == "new"
    assert prepare_run_dir(run, overwrite=False).kind == "new" and run.is_dir()
    (run / "checkpoint").write_text('model_checkpoint_path: "model-2"')
    (run / "stats.json").write_text(json.dumps([{"epoch_num": 1, "global_step": 2}]))
    state = prepare_run_dir(run, overwrite=False)
    assert (state.kind, state.last_epoch) == ("resume", 1)
    (run / FINISHED_MARKER).write_text("{}")
    with pytest.raises(InputError, match="finished run"):
        prepare_run_dir(run, overwrite=False)
    assert prepare_run_dir(run, overwrite=True).kind == "new"
    backups = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(backups) == 1 and (backups[0] / FINISHED_MARKER).is_file()  # moved aside, not deleted
    assert list(run.iterdir()) == []
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(InputError, match="not a training run"):
        prepare_run_dir(foreign, overwrite=False)


def finished_phase(path, epochs):
    """A phase directory as a run of ``epochs`` epochs leaves it (checkpoint, history, marker)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "checkpoint").write_text(f'model_checkpoint_path: "model-{2 * epochs}"')
    (path / f"model-{2 * epochs}.index").write_bytes(b"")
    (path / "stats.json").write_text(json.dumps([{"epoch_num": e, "global_step": 2 * e} for e in range(1, epochs + 1)]))
    (path / FINISHED_MARKER).write_text(json.dumps({"epochs": epochs}))


def test_run_dir_failed_start_short_run_and_overwrite(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.log").write_text("tensorpack log of a start that failed")
    assert inspect_run_dir(run).kind == "new"  # what set_logger_dir leaves is not 'foreign'
    (run / "run.json").write_text("{}")
    assert prepare_run_dir(run, overwrite=False).kind == "new"

    # A run finished after 1 epoch is finished for 1 epoch but resumable when 2 are asked for.
    finished_phase(run, 1)
    assert inspect_run_dir(run, epochs=1).kind == "finished"
    with pytest.raises(InputError, match="finished run"):
        prepare_run_dir(run, overwrite=False, epochs=1)
    state = prepare_run_dir(run, overwrite=False, epochs=2)
    assert (state.kind, state.last_epoch) == ("resume", 1) and not (run / FINISHED_MARKER).exists()

    # --overwrite moves an interrupted run aside too (a fresh start), and never over an earlier backup.
    assert prepare_run_dir(run, overwrite=True).kind == "new" and list(run.iterdir()) == []
    finished_phase(run, 1)
    assert prepare_run_dir(run, overwrite=True, epochs=5).kind == "new"
    backups = sorted(p for p in tmp_path.iterdir() if p.name.startswith("run.old-"))
    assert len(backups) == 2 and {(b / FINISHED_MARKER).exists() for b in backups} == {False, True}
    assert all((b / "checkpoint").is_file() for b in backups)


def test_check_run_dir_is_the_one_refusal_and_changes_nothing(tmp_path):
    run = tmp_path / "run"
    finished_phase(run, 1)
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(InputError, match="finished run"):
        check_run_dir(run, overwrite=False, epochs=1)
    assert check_run_dir(run, overwrite=False, epochs=1, skip_finished=True).kind == "finished"  # train() skips it
    assert check_run_dir(run, overwrite=False, epochs=2).kind == "resume"
    assert check_run_dir(run, overwrite=True, epochs=1).kind == "finished"  # only prepare_run_dir moves it
    assert sorted(p.name for p in run.iterdir()) == before
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(InputError, match="not a training run"):
        check_run_dir(foreign, overwrite=False, skip_finished=True)


def test_phase2_init_last_or_best(tmp_path):
    phase1 = tmp_path / "phase1"
    phase1.mkdir()
    assert phase_init_checkpoint(tmp_path, 2) is None
    for name in ("model-40", "model-120", "model-80", f"{BEST_CHECKPOINT}"):
        (phase1 / f"{name}.index").write_text("")
    (phase1 / "model-9x.index").write_text("")  # not a step: ignored
    assert phase_init_checkpoint(tmp_path, 2) == phase1 / "model-120"  # largest step, not newest name
    assert phase_init_checkpoint(tmp_path, 2, "last") == phase1 / "model-120"
    assert phase_init_checkpoint(tmp_path, 2, "best") == phase1 / BEST_CHECKPOINT
    for name in ("model-40", "model-120", "model-80"):
        (phase1 / f"{name}.index").unlink()
    assert phase_init_checkpoint(tmp_path, 2, "last") == phase1 / BEST_CHECKPOINT  # falls back
    with pytest.raises(ValueError, match="PHASE2_INIT"):
        phase_init_checkpoint(tmp_path, 2, "first")
    assert config_from_args().TRAIN.PHASE2_INIT == "last"
    with pytest.raises(ValueError, match="PHASE2_INIT"):
        config_from_args(["TRAIN.PHASE2_INIT=first"])


def test_an_xla_runner_phase_resumes_and_finishes_like_a_train_py_one(tmp_path):
    """xla_runner train's resume marker is checkpoint.json and its checkpoints model-epoch<e>.npz: the same states."""
    run = tmp_path / "xla" / "phase1"
    run.mkdir(parents=True)
    for epoch in (1, 2):
        (run / f"model-epoch{epoch}.npz").write_bytes(b"")
    (run / "checkpoint.json").write_text(json.dumps({"epoch": 2, "file": "model-epoch2.npz"}))
    (run / "stats.json").write_text(json.dumps([{"epoch_num": e, "global_step": e} for e in (1, 2)]))
    assert inspect_run_dir(run, epochs=3) == inspect_run_dir(run) and inspect_run_dir(run).kind == "resume"
    mark_finished(run, 2)
    assert json.loads((run / FINISHED_MARKER).read_text())["epochs"] == 2
    assert inspect_run_dir(run, epochs=2).kind == "finished"
    with pytest.raises(InputError, match="finished run"):
        check_run_dir(run, overwrite=False, epochs=2)
    assert prepare_run_dir(run, overwrite=False, epochs=4).kind == "resume" and not (run / FINISHED_MARKER).exists()
    assert [p.name for p in phase_checkpoints(run)] == ["model-epoch1.npz", "model-epoch2.npz"]
    (run / "model-best.npz").write_bytes(b"")
    assert phase_init_checkpoint(tmp_path / "xla", 2, "last") == run / "model-epoch2.npz"
    assert phase_init_checkpoint(tmp_path / "xla", 2, "best") == run / "model-best.npz"


def test_record_run_keeps_the_first_settings_and_a_line_per_start(tmp_path, caplog):
    phase = tmp_path / "phase1"
    state = prepare_run_dir(phase, overwrite=False)
    record_run(phase, state, {"phase": "phase1", "towers": 1, "config": {"A": 1}})
    (phase / "checkpoint").write_text('model_checkpoint_path: "model-2"')
    resumed = inspect_run_dir(phase)
    with caplog.at_level("WARNING", logger="src.train.run_folder"):
        record_run(phase, resumed, {"phase": "phase1", "towers": 2, "config": {"A": 1}})
    assert json.loads((phase / RUN_RECORD).read_text())["towers"] == 1  # the first start's
    starts = [json.loads(line) for line in (phase / RUN_HISTORY).read_text().splitlines()]
    assert [(s["start"], s["towers"]) for s in starts] == [("new", 1), ("resume", 2)]
    assert "different towers" in caplog.text


def test_a_start_from_a_bundle_keeps_the_bundles_training_record(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "m.npz").write_bytes(b"")
    (models / "m.json").write_text(json.dumps({"history": [{"epoch_num": 36}], "scores": {"a": 1}}))
    (models / "imagenet.npz").write_bytes(b"")  # no record beside it: nothing to keep
    phase = tmp_path / "phase1"
    record_run(phase, prepare_run_dir(phase, overwrite=False), {"phase": "phase1", "init": str(models / "m.npz")})
    kept = json.loads((phase / INIT_RECORD).read_text())
    assert kept == {"path": str(models / "m.json"), "history": [{"epoch_num": 36}], "scores": {"a": 1}}
    (models / "m.json").write_text(json.dumps({"history": [], "replaced": True}))  # the bundle moves on
    (phase / "checkpoint").write_text('model_checkpoint_path: "model-2"')
    record_run(phase, inspect_run_dir(phase), {"phase": "phase1", "init": str(models / "m.npz")})
    assert json.loads((phase / INIT_RECORD).read_text()) == kept  # a resume keeps the record of the start
    other = tmp_path / "other"
    record_run(other, prepare_run_dir(other, overwrite=False), {"init": str(models / "imagenet.npz")})
    record_run(tmp_path / "scratch", prepare_run_dir(tmp_path / "scratch", overwrite=False), {"init": "None"})
    assert not (other / INIT_RECORD).exists() and not (tmp_path / "scratch" / INIT_RECORD).exists()


def test_phase_start_is_pretrained_or_the_previous_phase_or_a_refusal(tmp_path):
    assert phase_start(tmp_path, 1, "scratch", "last") is None
    assert phase_start(tmp_path, 1, "imagenet", "last", "w.npz") == "w.npz"
    with pytest.raises(InputError, match=r"phase 2 starts from phase 1, but .*phase1 has no checkpoint"):
        phase_start(tmp_path, 2, "previous", "last")
    finished_phase(tmp_path / "phase1", 2)
    assert phase_start(tmp_path, 2, "previous", "last") == tmp_path / "phase1" / "model-4"
    assert phase_start(tmp_path, 2, "previous", "last", "other.npz") == "other.npz"  # --pretrained wins
