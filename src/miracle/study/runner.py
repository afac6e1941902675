"""Runs of the study: Mean-Var against Mean-KL under the same model, data, budget, optimiser
and schedule, over several seeds; every run resumable, every figure written as JSON.

An output directory holds one study::

    OUT/study.json             the settings (a rerun must match them, and then resumes)
    OUT/runs/<run>/            one training-and-coding run: checkpoint, metrics.jsonl,
                               curve.json (accuracy during training), model.mrc,
                               trained.json (the posterior before coding), run.json (done)
    OUT/json/*.json            the figures, computed from the run files (see figures.py)
    OUT/baselines.json         optional: post-training baselines of a plainly trained network,
                               written by benchmarks/baselines.py; they join the size figure
    OUT/wall_time.json         the wall time of every invocation that ran there, kept current
                               every minute and after each finished run
    OUT/lock                   held by the invocation running the part (never committed)

Every run is trained and coded with a schedule the product ships (a preset of
``miracle.presets``), at a budget of the whole file. Mean-Var is tuned first: every pair of
learning rate and annealing rate is trained with seed 0 on the training data less a
validation split carved from it, coded, and judged by the decoded file's accuracy on that
split, so that the test set plays no part in the choice. The chosen pair then runs at every
budget and seed, as Mean-KL does with the product's defaults; Mean-KL's other form runs once
at the main budget, as an ablation.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path

import torch

from .. import data as data_module
from .. import files
from ..budget import Budget
from ..compress import build_trainer, decompress, index_bits_for, run_compression
from ..config import CompressConfig
from ..errors import InvalidInput, MiracleError, WorkerDied
from ..models import create_model, get_model_spec, model_names
from ..posteriors import LN2
from ..presets import get_preset as get_schedule
from ..provenance import provenance
from ..training import Trainer, TrainingDiverged, accuracy, evaluate_posterior, with_unrecorded_settings
from ..units import parse_budget_bits
from .analysis import objective_curve, posterior_tails, pruning_curves
from .stats import tail_summary

PARAMS = ("mean-var", "mean-kl")


@dataclass(frozen=True)
class StudyConfig:
    model: str
    dataset: str
    budget: str  # the file budget of the main comparison: convergence, tails, pruning
    seeds: int
    schedule: str  # the product's preset that trains and codes every run
    eval_every: int  # accuracy is measured every this many training steps (and checkpoints taken)
    eps_betas: tuple[float, ...]  # Mean-Var annealing rates tried
    mean_var_lrs: tuple[float, ...]  # Mean-Var learning rates tried (Mean-KL keeps the product's)
    other_budgets: tuple[str, ...] = ()  # also run at every seed, for size against error
    # Options on top of the preset (name, value), e.g. the quick preset's short training.
    schedule_changes: tuple[tuple[str, object], ...] = ()
    validation_examples: int = 10_000  # carved from the training data to judge Mean-Var's trials
    ablation_form: str | None = "bounded-mean"  # Mean-KL's other form: one run, main budget, seed 0
    prune_fractions: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
    target_fraction: float = 0.99  # convergence target: this fraction of the better final accuracy
    # Mean-Var "within budget": every block <= C_loc + this. Its per-block controller oscillates
    # around the budget; a loose tolerance favours Mean-Var, the side the paper claims is slower.
    budget_tolerance_bits: float = 1.0

    def __post_init__(self) -> None:
        # `--budget 2KB` on a preset that also runs 2 KB, or "1520B" beside "1.52KB": one size
        # is run once, or its runs would be trained twice and counted twice.
        kept = {parse_budget_bits(self.budget): self.budget}
        for budget in self.other_budgets:
            kept.setdefault(parse_budget_bits(budget), budget)
        object.__setattr__(self, "other_budgets", tuple(kept.values())[1:])

    @property
    def budgets(self) -> tuple[str, ...]:
        return (self.budget, *self.other_budgets)

    def schedule_options(self) -> dict:
        return {**get_schedule(self.schedule), **dict(self.schedule_changes)}

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))  # tuples become lists, as in the saved file


def part_name(config: StudyConfig) -> str:
    return f"{config.model}-{config.dataset}"


_LENET5_MNIST = StudyConfig(model="lenet5-relu", dataset="mnist", budget="1.52KB", seeds=3, schedule="demo",
                            eval_every=250, eps_betas=(1e-3, 3e-3, 1e-2), mean_var_lrs=(3e-3, 1e-2),
                            other_budgets=("1KB", "2KB", "3.03KB"))
# A preset is one or more parts: a model on a dataset each, in its own folder of the study.
PRESETS: dict[str, tuple[StudyConfig, ...]] = {
    # Minutes, not hours: the slow integration test's preset. The demo schedule, much shortened.
    "quick": (StudyConfig(model="lenet5-relu", dataset="mnist", budget="1.52KB", seeds=3, schedule="demo",
                          eval_every=100, eps_betas=(3e-3,), mean_var_lrs=(1e-3, 1e-2),
                          schedule_changes=(("steps", 600), ("kl_anneal_steps", 200), ("blocks_per_group", 125),
                                            ("retrain_steps", 10)),
                          validation_examples=5000, prune_fractions=(0.0, 0.3, 0.6, 0.9)),),
    "full": (_LENET5_MNIST, replace(_LENET5_MNIST, dataset="fashion-mnist"),
             # Mean-Var on LeNet-300 was best at the largest rate of the grid above, and one step
             # further is better still (results/experiments/mean-var-grid-lenet300-mnist.json); on
             # LeNet-5 that step is worse (mean-var-grid-lenet5-relu-*.json).
             replace(_LENET5_MNIST, model="lenet300", other_budgets=(), mean_var_lrs=(3e-3, 1e-2, 3e-2))),
}
# The full preset's main comparison alone: every part at its main budget, without the sweep of
# other budgets, in under half the time. Its runs are the full preset's runs of that budget.
PRESETS["main"] = tuple(replace(part, other_budgets=()) for part in PRESETS["full"])


@dataclass(frozen=True)
class RunSpec:
    param: str
    budget: str
    seed: int
    eps_beta: float | None = None  # Mean-Var only
    lr: float | None = None  # None: the product's default for the posterior
    tuning: bool = False  # trained without the validation examples, judged on them, never the test set
    form: str | None = None  # Mean-KL only; None: the product's default form

    @property
    def name(self) -> str:
        form = f"-{self.form}" if self.form else ""
        lr = f"_lr{self.lr:g}" if self.lr is not None else ""
        eps = f"_eps{self.eps_beta:g}" if self.eps_beta is not None else ""
        return f"{self.param}{form}_{self.budget}{lr}{eps}_seed{self.seed}{'_validation' if self.tuning else ''}"


def get_preset(name: str) -> tuple[StudyConfig, ...]:
    if name not in PRESETS:
        raise InvalidInput(f"unknown study preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def check_config(config: StudyConfig) -> None:
    """Every error the settings can cause, before any work."""
    if config.model not in model_names():
        raise InvalidInput(f"unknown model {config.model!r}; choose one of {', '.join(model_names())}")
    if config.dataset not in data_module.DATASETS:
        raise InvalidInput(f"unknown dataset {config.dataset!r}; choose one of {', '.join(data_module.DATASETS)}")
    if config.seeds < 1 or config.eval_every < 1:
        raise InvalidInput("seeds and eval_every must be at least 1")
    if config.validation_examples < 1:
        raise InvalidInput("Mean-Var's trials need a validation split: validation_examples must be at least 1")
    if config.ablation_form:
        _compress_config(config, RunSpec("mean-kl", config.budget, 0, form=config.ablation_form))
    model = create_model(config.model)
    for budget in config.budgets:
        # The configuration checks the schedule; a budget too small for the model fails here.
        options = _compress_config(config, RunSpec("mean-kl", budget, 0))
        index_bits_for(Budget.from_options(budget), model, bits_per_block=options.bits_per_block,
                       group_sizes=options.hashing(get_model_spec(config.model).group_sizes))


def check_data(config: StudyConfig, data_dir: str | None) -> None:
    """A missing or damaged dataset fails before any folder is made, not after the first runs."""
    for split in ("train", "test"):
        _split(config.dataset, split, data_dir)


def open_preset(out: Path, preset: str, parts: tuple[StudyConfig, ...]) -> None:
    """Create ``out`` for a preset's parts (one folder each), or check that it holds this very
    preset; each part's folder is then checked by :func:`open_study`."""
    _claim(out, "preset.json", {"preset": preset, "parts": [part_name(p) for p in parts]}, part_of_a_study="study.json")


# Written by benchmarks/baselines.py into a part's folder, possibly before the part's first run.
BASELINES_FILE = "baselines.json"


def open_study(out: Path, config: StudyConfig, preset: str) -> None:
    """Create ``out`` for this study, or check that it already holds this very study."""
    _claim(out, "study.json", {"preset": preset, "config": config.to_dict()}, tolerated=(BASELINES_FILE,))


def _claim(out: Path, settings_name: str, identity: dict, part_of_a_study: str | None = None,
           tolerated: tuple[str, ...] = ()) -> None:
    """Make ``out`` hold ``identity`` in ``settings_name``, or check that it already does: a
    folder holding another study, or anything else, is refused rather than mixed in. A folder
    holding ``part_of_a_study`` is one part of a study, never a whole one."""
    settings = out / settings_name
    if out.exists() and not out.is_dir():
        raise InvalidInput(f"{out} is a file; give a folder as --out")
    if part_of_a_study and (out / part_of_a_study).exists():
        raise InvalidInput(f"{out} holds one part of a study; give the study's own folder, the one above it")
    if settings.exists():
        saved = read_json(settings, "restore it, or delete the folder to start over")
        if {k: saved.get(k) for k in identity} != identity:
            raise InvalidInput(f"{out} holds a different study (preset {saved.get('preset')!r}, other settings); "
                               "choose another output directory, or delete it to start over")
        return
    if out.exists() and any(p.name not in tolerated for p in out.iterdir()):
        raise InvalidInput(f"{out} is not empty and holds no study; choose an empty or new output directory")
    files.make_folder(out)
    files.write_json(settings, {**identity, **provenance()})


def read_json(path: Path, remedy: str = "delete its run's folder to run it again"):
    """A study's own JSON file; a damaged one is named, with what to do, not a traceback."""
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise InvalidInput(f"{path} is damaged ({e}); {remedy}") from None


# -- one run ----------------------------------------------------------------------------------
VALIDATION_SEED = 0  # one carve for every run: all trials are scored on the same examples


@lru_cache(maxsize=4)
def _split(dataset: str, split: str, data_dir: str | None, validation_examples: int = 0):
    """"train", "test", or with ``validation_examples``: "train" without the validation
    examples and "validation", both carved from the training data alone."""
    if not validation_examples:
        return data_module.load(dataset, split, data_dir)
    rest, validation = data_module.carve(data_module.load(dataset, "train", data_dir), validation_examples,
                                         VALIDATION_SEED)
    return {"train": rest, "validation": validation}[split]


def _data(config: StudyConfig, spec: RunSpec, data_dir) -> tuple:
    """(training data, evaluation data) of a run: a tuning run never sees the test set."""
    if spec.tuning:
        return (_split(config.dataset, "train", data_dir, config.validation_examples),
                _split(config.dataset, "validation", data_dir, config.validation_examples))
    return _split(config.dataset, "train", data_dir), _split(config.dataset, "test", data_dir)


def _compress_config(config: StudyConfig, spec: RunSpec) -> CompressConfig:
    """The run's settings: the product's schedule at a file budget; the study sets only what it
    compares (the posterior, its form, Mean-Var's rates) and the seed."""
    return CompressConfig.from_options(
        config.schedule, **{**dict(config.schedule_changes), "budget": spec.budget, "param": spec.param,
                            "seed": spec.seed, "checkpoint_every": config.eval_every,
                            **({"lr": spec.lr} if spec.lr is not None else {}),
                            **({"eps_beta": spec.eps_beta} if spec.eps_beta is not None else {}),
                            **({"mean_kl_form": spec.form} if spec.form is not None else {})})


def effective_lr(config: StudyConfig, spec: RunSpec) -> float:
    return _compress_config(config, spec).training().learning_rate(spec.param, 0)


def _trainer(config: StudyConfig, spec: RunSpec, run_dir: Path, data_dir) -> Trainer:
    return build_trainer(create_model(config.model, spec.seed), _data(config, spec, data_dir)[0],
                         _compress_config(config, spec), run_dir, model_name=config.model, data_name=config.dataset)


def _curve_point(trainer: Trainer, test) -> dict:
    vmodel = trainer.vmodel
    with torch.no_grad():
        kl_bits = vmodel.kl_nats_per_block() / LN2
    return {"step": trainer.step, "seconds": round(trainer.seconds, 3),
            **evaluate_posterior(vmodel, test, trainer.config.seed),
            "kl_bits_per_block_max": float(kl_bits.max()), "kl_bits_total": float(kl_bits.sum())}


def _train_with_curve(trainer: Trainer, run_dir: Path, test, eval_every: int, progress: bool) -> list[dict]:
    """Train to the configured steps, measuring the test accuracy every ``eval_every`` steps;
    the curve is saved after each measurement, so a resumed run keeps it."""
    trainer.start()
    path = run_dir / "curve.json"
    curve = [p for p in (read_json(path) if path.exists() else []) if p["step"] <= trainer.step]
    while True:
        if trainer.step % eval_every == 0 and (not curve or curve[-1]["step"] < trainer.step):
            curve.append(_curve_point(trainer, test))
            files.write_json(path, curve, indent=1)
        if trainer.step >= trainer.config.steps:
            break
        trainer.train_until(min((trainer.step // eval_every + 1) * eval_every, trainer.config.steps), progress,
                            transient=True)  # one window of many: a log gets the runs' done lines
        trainer.save_checkpoint()
    if curve[-1]["step"] < trainer.step:  # steps not a multiple of eval_every
        curve.append(_curve_point(trainer, test))
        files.write_json(path, curve, indent=1)
    return curve


def execute_run(config: StudyConfig, spec: RunSpec, out: Path, data_dir: str | None = None,
                progress: bool = False) -> dict:
    """Train, code, decode and analyse one run; resumable at every stage."""
    threads = torch.get_num_threads()
    try:
        return _execute_run(config, spec, out, data_dir, progress)
    except TrainingDiverged as error:
        if not spec.tuning:
            raise
        return _diverged_trial(config, spec, out, error)
    finally:  # a resumed run continues at the thread count it began with; the next run must not
        torch.set_num_threads(threads)


def _execute_run(config: StudyConfig, spec: RunSpec, out: Path, data_dir: str | None, progress: bool) -> dict:
    finished = finished_run(config, spec, out)
    if finished is not None:
        return finished
    run_dir = out / "runs" / spec.name
    test = _data(config, spec, data_dir)[1]  # the validation split for a tuning run
    trainer = _trainer(config, spec, run_dir, data_dir)
    trained_path = run_dir / "trained.json"
    if trained_path.exists():
        trained = read_json(trained_path)
    else:
        curve = _train_with_curve(trainer, run_dir, test, config.eval_every, progress)
        trained = {
            "curve": curve,
            "objective": objective_curve(run_dir, trainer.num_examples, config.eval_every),
            "final": evaluate_posterior(trainer.vmodel, test, spec.seed),
            "step_ms": round(trainer.step_ms(), 2), "train_seconds": round(trainer.seconds, 2),
            "tails": posterior_tails(trainer.vmodel), "kl": trainer.vmodel.kl_summary(),
            "evaluated_on": "validation" if spec.tuning else "test",
        }
        files.write_json(trained_path, trained, indent=1)
    start = time.perf_counter()
    mrc = run_dir / "model.mrc"
    result = run_compression(trainer, _compress_config(config, spec).coding(), mrc, config.model, progress)
    coding_seconds = time.perf_counter() - start
    decoded = decompress(mrc)
    vmodel = result.vmodel
    real = vmodel.layout.is_real
    s = vmodel.prior.slot_scales().detach()
    run = {
        **trained,
        "settings": _settings(config, spec),
        # The commit and the thread count decide a run's arithmetic, so its floating-point path.
        "finished_by": provenance(),
        "size_bytes": result.size_bytes,
        "decoded_test_accuracy": accuracy(decoded, test),
        "coding_seconds": round(coding_seconds, 2),
        "decoded_tails": tail_summary((vmodel.coded_values / s)[real]),
    }
    pruning = pruning_curves(decoded, vmodel, test, config.prune_fractions, spec.seed)
    run["pruning"] = pruning.pop("magnitude")
    run.update({f"pruning_{order}": curve for order, curve in pruning.items()})
    files.write_json(run_dir / "run.json", run, indent=1)
    return run


def _diverged_trial(config: StudyConfig, spec: RunSpec, out: Path, error: TrainingDiverged) -> dict:
    """A Mean-Var trial whose rates make training diverge: a result of the tuning, reported and
    never chosen, not the end of the study (and, being deterministic, of every rerun)."""
    run_dir = out / "runs" / spec.name
    curve = read_json(run_dir / "curve.json") if (run_dir / "curve.json").exists() else []
    reason = str(error).split(";")[0]  # the rest advises options the study does not take
    run = {"settings": _settings(config, spec), "finished_by": provenance(), "diverged": reason, "curve": curve,
           "train_seconds": curve[-1]["seconds"] if curve else 0.0, "coding_seconds": 0.0,
           "decoded_test_accuracy": None}
    files.write_json(run_dir / "run.json", run, indent=1)
    return run


def _settings(config: StudyConfig, spec: RunSpec) -> dict:
    return json.loads(json.dumps(_compress_config(config, spec).to_dict()))  # as saved: lists, not tuples


def finished_run(config: StudyConfig, spec: RunSpec, out: Path) -> dict | None:
    """A finished run's figures, or None. One made with settings the product no longer ships (a
    default that changed) would compare an old product with the new one: it is refused, never
    silently reused. (Runs from before settings were recorded are taken as they are.)"""
    done = out / "runs" / spec.name / "run.json"
    if not done.exists():
        return None
    run = read_json(done)
    settings = _settings(config, spec)
    # A setting added to the product since the run was made is compared at the value the run had.
    saved = with_unrecorded_settings(run.get("settings", settings), CompressConfig)
    changed = sorted(name for name in settings.keys() | saved.keys() if saved.get(name) != settings.get(name))
    if changed:
        raise InvalidInput(f"{done.parent} was made with other settings ({', '.join(changed)}) than the product's "
                           "current ones; delete that folder to run it again")
    return run


def _baselines(out: Path, config: StudyConfig) -> dict | None:
    path = out / BASELINES_FILE
    if not path.exists():
        return None
    try:
        baselines = json.loads(path.read_text())
        subject = (baselines["model"], baselines["dataset"])
    except (ValueError, KeyError, TypeError):
        raise InvalidInput(f"{path} is not a baselines file of benchmarks/baselines.py; rewrite or remove it") from None
    if subject != (config.model, config.dataset):
        raise InvalidInput(f"{path} holds baselines of {subject[0]} on {subject[1]}, not of this study's "
                           f"{config.model} on {config.dataset}; move it to that study's folder")
    return baselines


# -- the whole study ----------------------------------------------------------------------------
WALL_TIME_FILE = "wall_time.json"


class WallTimeLog:
    """The part's wall time, summed over the invocations that ran it: a part run in pieces, or
    killed and resumed, still adds up. Each invocation that has runs to make gets its own entry,
    rewritten every `heartbeat_seconds` from `start` on and after every finished run, so a killed
    one loses at most a heartbeat. One that was refused, or found every run made (redrawing the
    report), writes nothing."""

    def __init__(self, out: Path, jobs: int, heartbeat_seconds: float = 60.0) -> None:
        self.path = out / WALL_TIME_FILE
        self.started = 0.0
        self.entries = (read_json(self.path, "restore it, or delete it (the part's wall time is then not measured)")
                        if self.path.exists() else [])
        self.entry = {**provenance(), "jobs": jobs, "runs_finished_before": self._finished(), "seconds": 0.0}
        self.heartbeat_seconds = heartbeat_seconds
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def _finished(self) -> int:
        return sum(1 for _ in self.path.parent.glob("runs/*/run.json"))

    def update(self) -> None:
        if self._heartbeat is None:  # not started: no work to log
            return
        with self._lock:
            self.entry.update(seconds=round(time.perf_counter() - self.started, 1),
                              runs_finished=self._finished() - self.entry["runs_finished_before"])
            files.write_json(self.path, self.entries, indent=1)

    def start(self) -> None:
        """From now until `stop`, log this invocation and rewrite its entry every heartbeat: a run
        takes minutes, and a kill between two finished runs should not lose them."""
        if self._heartbeat is None:
            self.started = time.perf_counter()
            self.entries.append(self.entry)
            self._heartbeat = threading.Thread(target=self._beat, daemon=True)
            self._heartbeat.start()

    def _beat(self) -> None:
        while not self._stopped.wait(self.heartbeat_seconds):
            try:
                self.update()
            except files.WriteError:  # a full disk, say: the next beat, or stop(), tries again
                pass

    def stop(self, error_in_flight: bool = False) -> None:
        if self._heartbeat is None:  # no work started
            return
        self._stopped.set()
        self._heartbeat.join()
        try:
            self.update()
        except files.WriteError:
            if not error_in_flight:  # else the error that stopped the work is the one to report
                raise


@contextmanager
def worker_pool(jobs: int) -> Iterator[ProcessPoolExecutor]:
    """``jobs`` processes of one thread each (two 2-thread processes on 2 cores stall each
    other). An interrupt or an error in the parent stops them at once: otherwise a worker would
    go on with its run and the pool would wait for it, and then start the next. A worker that
    dies (killed from outside, or crashed) is a :class:`WorkerDied`; the others stop too."""
    context = get_context("spawn")
    # The workers watch a pipe that only the parent can write to and never does: its end of file,
    # when the parent closes it or dies however it dies, is their signal to stop. (Not a shared
    # multiprocessing.Event: its set() hangs once a waiting process has died, CPython gh-75158.)
    stop_reader, stop_writer = context.Pipe(duplex=False)
    pool = ProcessPoolExecutor(jobs, mp_context=context, initializer=_worker_init, initargs=(1, stop_reader))
    with stop_reader, stop_writer, pool:
        try:
            yield pool
        except BaseException as exc:
            stop_writer.close()  # now: leaving the pool's `with` waits for the workers' runs to end
            if isinstance(exc, BrokenProcessPool):
                raise WorkerDied("a worker process of the study died (killed from outside, out of memory say, or "
                                 "crashed); the runs finished so far are saved: run the same command again to "
                                 "resume, with fewer --jobs if memory is short") from exc
            raise


def _worker_init(threads: int, stop_reader) -> None:
    torch.set_num_threads(threads)
    threading.Thread(target=_exit_when_told, args=(stop_reader,), daemon=True).start()


def _exit_when_told(stop_reader) -> None:
    # Runs save atomically, so leaving mid-run is safe: the next `miracle study` resumes them.
    try:
        stop_reader.recv_bytes()
    except (EOFError, OSError):
        pass
    os._exit(1)


def _run_all(config: StudyConfig, trials: list[RunSpec], mean_kl: list[RunSpec], out: Path, data_dir, jobs: int,
             log, wall_time: WallTimeLog) -> tuple[dict[RunSpec, dict], RunSpec]:
    """Every run of the part, and the Mean-Var trial chosen. The trials go first; once they are
    all done, the chosen setting's runs join the queue behind the Mean-KL runs, so that no
    worker waits for the others to end a phase."""
    results: dict[RunSpec, dict] = {}

    def finished(spec: RunSpec, result: dict) -> None:
        results[spec] = result
        wall_time.update()
        log(_done_line(spec, result))

    def chosen_trial() -> RunSpec:
        chosen = choose_mean_var({t: results[t] for t in trials})
        log(f"Mean-Var setting chosen: learning rate {chosen.lr:g}, annealing rate {chosen.eps_beta:g}")
        return chosen

    if jobs == 1:
        for spec in trials + mean_kl:
            finished(spec, execute_run(config, spec, out, data_dir, progress=True))
        chosen = chosen_trial()
        for spec in _mean_var_runs(config, chosen):
            finished(spec, execute_run(config, spec, out, data_dir, progress=True))
        return results, chosen
    chosen: RunSpec | None = None
    with worker_pool(jobs) as pool:
        pending = {pool.submit(execute_run, config, spec, out, data_dir): spec for spec in trials + mean_kl}
        while pending:
            # A signal the kernel hands to another of this process's threads only sets a flag
            # that the main thread checks when it wakes: waking every second keeps Ctrl-C prompt.
            done, _ = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
            for future in done:
                finished(pending.pop(future), future.result())
            if chosen is None and all(t in results for t in trials):
                chosen = chosen_trial()
                pending.update({pool.submit(execute_run, config, spec, out, data_dir): spec
                                for spec in _mean_var_runs(config, chosen)})
    in_order = trials + mean_kl + _mean_var_runs(config, chosen)  # as one process would have run them
    return {spec: results[spec] for spec in in_order}, chosen


def _done_line(spec: RunSpec, result: dict) -> str:
    if "diverged" in result:
        return f"  done: {spec.name}: {result['diverged']}; a trial that will not be chosen"
    line = (f"  done: {spec.name}: posterior sample {100 * result['final']['test_accuracy_sample']:.2f}%, "
            f"largest block KL {result['kl']['kl_bits_per_block_max']:.1f} bits")
    if "decoded_test_accuracy" in result:
        line += f"; file {result['size_bytes']} bytes, decoded {100 * result['decoded_test_accuracy']:.2f}%"
    return line


def choose_mean_var(trials: dict[RunSpec, dict]) -> RunSpec:
    """The Mean-Var trial (learning rate and annealing rate) whose seed-0 file decodes to the
    best accuracy on the validation split: the end-to-end criterion. (Choosing by the budget
    alone picks collapsed runs: a rate fast enough to meet the budget in a short schedule can
    drive the network to chance.) A diverged trial has no file and is never chosen."""
    scored = [spec for spec in trials if trials[spec]["decoded_test_accuracy"] is not None]
    if not scored:
        raise MiracleError("every Mean-Var trial diverged: the preset's learning or annealing rates are too large")
    return max(scored, key=lambda spec: trials[spec]["decoded_test_accuracy"])


def _trials(config: StudyConfig) -> list[RunSpec]:
    return [RunSpec("mean-var", config.budget, 0, eps, lr, tuning=True)
            for lr in config.mean_var_lrs for eps in config.eps_betas]


def _mean_kl_runs(config: StudyConfig) -> list[RunSpec]:
    runs = [RunSpec("mean-kl", budget, seed) for budget in config.budgets for seed in range(config.seeds)]
    if config.ablation_form:
        runs.append(RunSpec("mean-kl", config.budget, 0, form=config.ablation_form))
    return runs


def _mean_var_runs(config: StudyConfig, chosen: RunSpec) -> list[RunSpec]:
    """The chosen trial's setting at every budget and seed, trained and judged like Mean-KL."""
    return [replace(chosen, budget=budget, seed=seed, tuning=False)
            for budget in config.budgets for seed in range(config.seeds)]


def prepare_study(config: StudyConfig, out: Path, preset: str, data_dir: str | None = None) -> None:
    """Every refusal a part can meet before its runs, so that a command of several parts is
    refused at once and not after hours of the first: settings, data, its folder, its
    baselines, and a finished run made with settings the product no longer ships (Mean-Var's
    runs for whichever trial will win too)."""
    check_config(config)
    check_data(config, data_dir)
    open_study(out, config, preset)
    _baselines(out, config)
    trials = _trials(config)
    for spec in trials + _mean_kl_runs(config) + [run for t in trials for run in _mean_var_runs(config, t)]:
        finished_run(config, spec, out)


def run_study(config: StudyConfig, out: Path, preset: str, data_dir: str | None = None, jobs: int = 1,
              log=print) -> dict:
    """Every run of the study (resuming what is done), then the figures as JSON."""
    from .figures import write_figures

    prepare_study(config, out, preset, data_dir)
    with files.exclusive(out):  # two invocations on one part would train the same runs at once
        open_study(out, config, preset)  # again, now that no other invocation can write it
        summary = _run_part(config, out, preset, data_dir, jobs, log)
        write_figures(summary, out / "json")
    return summary


def _run_part(config: StudyConfig, out: Path, preset: str, data_dir: str | None, jobs: int, log) -> dict:
    baselines = _baselines(out, config)
    wall_time = WallTimeLog(out, jobs)
    trials, mean_kl = _trials(config), _mean_kl_runs(config)
    log(f"study {preset}: {len(trials)} Mean-Var trials (learning and annealing rates, judged on a validation "
        f"split) and {len(mean_kl)} Mean-KL runs")
    if not _all_made(config, trials, mean_kl, out):
        wall_time.start()
    try:
        runs, chosen = _run_all(config, trials, mean_kl, out, data_dir, jobs, log, wall_time)
    except BaseException:
        wall_time.stop(error_in_flight=True)  # an interrupted invocation logs its time too
        raise
    wall_time.stop()
    return {
        "preset": preset, "config": config.to_dict(), "schedule_options": config.schedule_options(),
        "mean_var_chosen": {"lr": chosen.lr, "eps_beta": chosen.eps_beta},
        "lr": {"mean-kl": effective_lr(config, RunSpec("mean-kl", config.budget, 0)), "mean-var": chosen.lr},
        "annealing_trials": [{"lr": t.lr, "eps_beta": t.eps_beta, **_trial_summary(runs[t])} for t in trials],
        "runs": {spec.name: {**runs[spec], "spec": {**asdict(spec), "lr": effective_lr(config, spec)}}
                 for spec in runs},
        "baselines": baselines,
        "seconds_this_invocation": wall_time.entry["seconds"],
        "wall_time": wall_time.entries,
        **provenance(),
    }


def _all_made(config: StudyConfig, trials: list[RunSpec], mean_kl: list[RunSpec], out: Path) -> bool:
    made = {spec: finished_run(config, spec, out) for spec in trials + mean_kl}
    if any(run is None for run in made.values()):
        return False
    chosen = choose_mean_var({t: made[t] for t in trials})
    return all(finished_run(config, spec, out) is not None for spec in _mean_var_runs(config, chosen))


def _trial_summary(run: dict) -> dict:
    if "diverged" in run:
        return {key: run[key] for key in ("diverged", "train_seconds", "decoded_test_accuracy")}
    return {"final": run["final"], "kl_bits_per_block_max": run["kl"]["kl_bits_per_block_max"],
            "train_seconds": run["train_seconds"], "decoded_test_accuracy": run["decoded_test_accuracy"]}


__all__ = ["PRESETS", "StudyConfig", "RunSpec", "check_data", "get_preset", "open_preset", "part_name", "prepare_study",
           "run_study", "execute_run", "choose_mean_var", "worker_pool"]
