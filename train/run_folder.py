"""The run folder of a training run, with the same guarantees for pretraining, SFT and RL:

- one run at a time: the main process holds an exclusive lock on `.run.lock` for the whole run; a second
  run (or a `--resume`) on the folder stops at once with "run folder in use by pid N";
- nothing is mixed: a folder that holds a run is refused unless `--resume` or `--overwrite` is given, and an
  overwritten run's files are cleared only once the new run's setup has succeeded;
- nothing is lost to a kill: every file is written to a temporary name and renamed (`atomic_write_text`),
  checkpoints count only when complete, the log keeps what was flushed;
- nothing is executed: a checkpoint file holding pickled objects that are not plain tensors is refused
  unread, in one line (`refuse_pickled`, `tampered_checkpoint`), never with advice to load it anyway;
- a resume keeps the run's options (`check_resume_options`) and a finished run is not trained again.

    with RunFolder(output_dir, options, is_main, barrier) as run:
        ...set up the model and data...
        run.save_options()                 # a fresh run, once setup has succeeded
        log = MetricsLog(run.path, is_main)

The loop that fills it is `train/trainer.py` (pretraining, SFT) or `train/rl/cli.py` (RL, through TRL).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections.abc import Callable, Iterable
from contextlib import contextmanager, nullcontext
from pathlib import Path

from mdlm.decode.loading import quiet_transformers_progress  # noqa: F401  (the run folder saves quietly)

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
OPTIONS_FILE = "run_options.yaml"
METRICS_FILE = "metrics.jsonl"
CURVE_FILE = "training_curve.png"
LOCK_FILE = ".run.lock"

# What a run leaves in its folder (globs): cleared when a run is overwritten.
RUN_FILES = (STATE_FILE, OPTIONS_FILE, METRICS_FILE, CURVE_FILE, CHECKPOINTS)
# What only a run that got as far as its first save leaves: a folder holding one of these "holds a run". A run
# that died before its first save left at most its options and log, which nothing is lost by starting over.
SAVED_FILES = (STATE_FILE, CHECKPOINTS)

# Options that may change when a run is resumed; any other change would make it a different run.
RESUMABLE_CHANGES = frozenset({"resume", "overwrite", "max_steps", "eval_every", "save_every", "first_save",
                               "log_every", "progress", "stop_at_step", "config_file", "eval_batches",
                               "output_dir"})  # a run folder may be moved
# Saved options that belonged to the invocation that saved them, not to the run.
ONE_OFF_OPTIONS = ("stop_at_step", "overwrite", "config_file")


# ----------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------

def atomic_write_text(path: Path, text: str) -> None:
    """Write through a temporary file in the same folder and rename it: a kill leaves the old file or the
    new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def replace_files_from(staging: Path, target: Path) -> None:
    """Move every file of `staging` into `target` (each by one rename), then remove `staging`."""
    for file in sorted(staging.iterdir()):
        os.replace(file, target / file.name)
    staging.rmdir()


@contextmanager
def save_errors_named(folder: Path, what: str = "the checkpoint"):
    """A failed write (a full disk, a read-only folder) as one line naming the folder and the fix. safetensors
    reports a failed write as its own SafetensorError, which the CLIs would otherwise call a bug."""
    from safetensors import SafetensorError

    try:
        yield
    except SafetensorError as error:
        raise OSError(f"{folder}: could not write {what} ({' '.join(str(error).split())[:200]}); free disk "
                      "space or fix the folder's permissions, then --resume (the previous checkpoint is intact)") from None


def read_state(folder: Path) -> dict | None:
    """The run's `trainer_state.json` ({"step", "max_steps", "finished", ...}), or None before its first save."""
    path = Path(folder) / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def write_state(folder: Path, **state) -> None:
    atomic_write_text(Path(folder) / STATE_FILE, json.dumps(state, indent=1))


# ----------------------------------------------------------------------------------------------------
# The metrics log
# ----------------------------------------------------------------------------------------------------

class MetricsLog:
    """`metrics.jsonl`: one JSON record per line, appended and flushed as written (a kill loses nothing
    written); on resume, `keep_until(step)` drops what a killed run logged after its checkpoint."""

    def __init__(self, folder: Path, enabled: bool = True, records: Iterable[dict] | None = None):
        self.folder, self.enabled = Path(folder), enabled
        self.path = self.folder / METRICS_FILE
        if records is not None:
            self.records = list(records)
        else:
            self.records = [json.loads(line) for line in self.path.read_text().splitlines()] if self.path.exists() else []

    def keep_until(self, step: int) -> None:
        self.records = [r for r in self.records if r.get("step", 0) <= step]
        if self.enabled:
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))

    def append(self, record: dict) -> None:
        self.records.append(record)
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
                os.fsync(f.fileno())


# ----------------------------------------------------------------------------------------------------
# Checkpoints that cannot run code
# ----------------------------------------------------------------------------------------------------

def tampered_checkpoint(folder: Path, error: BaseException) -> ValueError:
    """The one-line refusal of a checkpoint file that holds pickled objects other than plain tensors. torch's
    own message advises loading it with weights_only=False, the one thing not to do: only its reason is kept."""
    lines = (line.replace("WeightsUnpickler error:", "").strip() for line in str(error).splitlines())
    reason = next((line for line in lines if line and not any(word in line for word in ("weights_only", "torch.load",
                                                                                          "weights only"))),
                  type(error).__name__)
    return ValueError(f"--resume {folder}: a file in it holds pickled objects that are not plain tensors, so it was "
                      f"refused unread ({reason[:120]}); the checkpoint is tampered or foreign: resume from another "
                      "checkpoint or start over")


def refuse_pickled(folder: Path, patterns: Iterable[str], allowed_globals: Callable = nullcontext) -> None:
    """Read the pickle-format files `patterns` of checkpoint `folder` with `weights_only=True` before anything
    else does, so that a file carrying code stops the resume in one line (and the code never runs), whichever
    library would have loaded it later and however it would have reported the refusal. `allowed_globals` is
    the context under which that library loads them (transformers allows numpy's RNG state)."""
    import torch

    for pattern in patterns:
        for path in sorted(Path(folder).glob(pattern)):
            try:
                with allowed_globals():
                    torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as error:
                raise tampered_checkpoint(folder, error) from None
            except (EOFError, RuntimeError, OSError) as error:
                raise ValueError(f"--resume {folder}: {path.name} is damaged ({type(error).__name__}: "
                                 f"{str(error).splitlines()[0][:160] if str(error) else 'truncated'}); resume "
                                 "from another checkpoint or start over with --overwrite") from None


# ----------------------------------------------------------------------------------------------------
# The folder of one run
# ----------------------------------------------------------------------------------------------------

class RunFolderBusy(ValueError):
    pass


class RunLock:
    """An exclusive `flock` on `<run>/.run.lock` for the whole run (released by the kernel if the process
    dies, so a kill never leaves a stale lock). Only the main process takes it."""

    def __init__(self, output_dir: Path, active: bool = True):
        self.path, self.active, self.file = Path(output_dir) / LOCK_FILE, active, None

    def __enter__(self):
        import fcntl

        if not self.active:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            pid = self.file.read().strip() or "?"
            self.file.close()
            raise RunFolderBusy(f"run folder {self.path.parent} in use by pid {pid}; wait for that run to end "
                                "(then --resume it) or pass another --output-dir") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(str(os.getpid()))
        self.file.flush()
        return self

    def __exit__(self, *exc):
        if self.file is not None:
            self.file.close()  # closing releases the flock; the file stays (removing it would race)
            self.file = None


def _matches(folder: Path, patterns: Iterable[str]) -> list[Path]:
    return [path for pattern in patterns for path in sorted(folder.glob(pattern))]


def holds_run(folder: Path, saved_files: Iterable[str] = SAVED_FILES) -> bool:
    """Whether `folder` holds something a run saved (a checkpoint or a model)."""
    return bool(_matches(Path(folder), saved_files))


def prepare_output_dir(output_dir: Path, resume, overwrite: bool, saved_files: Iterable[str] = SAVED_FILES) -> None:
    """Refuse to mix two runs in one folder unless asked to resume or overwrite. Every process checks (so
    all of them stop with the error)."""
    if output_dir.exists() and not resume and holds_run(output_dir, saved_files) and not overwrite:
        raise FileExistsError(f"{output_dir} already holds a training run; pass --resume to continue it, "
                              "--overwrite to replace it, or another --output-dir")


def clear_run_files(output_dir: Path, run_files: Iterable[str] = RUN_FILES) -> None:
    for path in _matches(output_dir, run_files):
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


class RunFolder:
    """The folder of one run, held for the whole run: the lock, the refusal to mix two runs, the options
    saved as `run_options.yaml`, and the check that a resumed run keeps them.

        with RunFolder(output_dir, options, accelerator.is_main_process, accelerator.wait_for_everyone) as run:
            ...set up the model and data...
            run.save_options()     # a fresh run, once setup has succeeded

    Entering takes the lock (main process; a read-only or unwritable folder fails here, before any loading),
    refuses a folder holding another run, and, when resuming, compares `options` with the saved ones on
    every process, so that all processes stop on a mismatch rather than the others waiting for a main
    process that has left. `compare=False` leaves that comparison to the caller (RL merges saved options).
    `run_files` / `saved_files` are the globs of what this kind of run writes / what marks a saved run."""

    def __init__(self, path, options: dict, is_main: bool = True, barrier: Callable[[], None] = lambda: None,
                 compare: bool = True, run_files: Iterable[str] = RUN_FILES, saved_files: Iterable[str] = SAVED_FILES):
        self.path, self.options, self.is_main, self.barrier = Path(path), options, is_main, barrier
        self.compare, self.run_files, self.saved_files = compare, tuple(run_files), tuple(saved_files)
        self.lock = RunLock(self.path, is_main)
        self.resuming = False

    @staticmethod
    def read_options(path) -> dict | None:
        """The options a run saved in folder `path` (without the one-off ones), or None."""
        import yaml

        saved = Path(path) / OPTIONS_FILE
        if not saved.is_file():
            return None
        options = yaml.safe_load(saved.read_text()) or {}
        for one_off in ONE_OFF_OPTIONS:
            options.pop(one_off, None)
        return options

    def __enter__(self) -> "RunFolder":
        self.lock.__enter__()
        try:
            resume, overwrite = self.options.get("resume"), self.options.get("overwrite", False)
            prepare_output_dir(self.path, resume, overwrite, self.saved_files)
            if self.is_main:
                self.path.mkdir(parents=True, exist_ok=True)
            self.barrier()
            saved = self.read_options(self.path) if resume else None
            self.resuming = saved is not None
            if self.resuming and self.compare:
                check_resume_options(saved, self.options)
        except BaseException:
            self.lock.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        self.lock.__exit__(*exc)

    def save_options(self, options: dict | None = None) -> None:
        """A fresh run, once its setup has succeeded: clear what an overwritten run left (not earlier, so a
        failed setup loses nothing) and write the options (`options`, default the ones given). A resumed run
        keeps the ones it started with. Main process only."""
        import yaml

        if self.is_main and not self.resuming:
            if not self.options.get("resume"):  # a bare --resume of an empty folder starts it, clearing nothing
                clear_run_files(self.path, self.run_files)
            atomic_write_text(self.path / OPTIONS_FILE, yaml.safe_dump(options or self.options, sort_keys=False))


def check_resume_options(saved: dict, now: dict) -> None:
    """Refuse a resume whose options differ from the saved ones, except RESUMABLE_CHANGES. An option the
    saved run does not list is newer than that run, which ran with its default: not a change."""
    changed = {k: (saved[k], v) for k, v in now.items() if k not in RESUMABLE_CHANGES and k in saved and saved[k] != v}
    if changed:
        raise ValueError(f"--resume with options that differ from the run's ({json.dumps(changed)}); "
                         "resume with the same options, or start a new --output-dir")
