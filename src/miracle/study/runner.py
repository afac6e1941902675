"""Runs of the study: Mean-Var against Mean-KL under the same model, data, budget, optimiser
and schedule, over several seeds; every run resumable, every figure written as JSON.

An output directory holds one study::

    OUT/study.json             the settings (a rerun must match them, and then resumes)
    OUT/runs/<run>/            one training-and-coding run: checkpoint, metrics.jsonl,
                               curve.json (test accuracy during training), model.mrc,
                               trained.json (the posterior before coding), run.json (done)
    OUT/json/*.json            the figures, computed from the run files (see figures.py)

Mean-Var is tuned first: every pair of learning rate and annealing rate of the preset is
trained and coded with seed 0, and the pair whose file decodes best is used for the other
seeds and budgets (its trial is the seed-0 run of the comparison). Mean-KL has nothing to
anneal and keeps its default learning rate.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path

import torch

from .. import data as data_module
from .. import files
from ..blocks import BlockLayout, num_blocks_for
from ..compress import build_trainer, decompress, run_compression
from ..config import CompressConfig
from ..errors import InvalidInput
from ..models import create_model, get_model_spec, model_names
from ..posteriors import LN2, kl_nats
from ..provenance import provenance
from ..training import METRICS_NAME, TrainConfig, Trainer, accuracy, evaluate_posterior
from ..units import parse_budget_bits
from ..variational import VariationalModel, select_parameters
from ..randomness import derived_generator
from .stats import prune_at_random, prune_by_magnitude, prune_by_signal_to_noise, tail_summary

PARAMS = ("mean-var", "mean-kl")
# The learning rates of runs whose names carry none: the product's defaults when results/study
# was made. Pinned here so that the product's defaults can move on without renaming runs.
BASE_LR = {"mean-kl": 3e-2, "mean-var": 1e-3}


@dataclass(frozen=True)
class StudyConfig:
    model: str
    dataset: str
    budget: str  # the budget of the main comparison
    seeds: int
    steps: int  # training steps before coding, the same for both
    eval_every: int  # test accuracy is measured every this many steps (and checkpoints taken)
    blocks_per_group: int
    retrain_steps: int
    eps_betas: tuple[float, ...]  # Mean-Var annealing rates tried
    mean_var_lrs: tuple[float, ...]  # Mean-Var learning rates tried (Mean-KL keeps its default)
    sweep_budgets: tuple[str, ...]  # further budgets for size against error (seed 0)
    prune_fractions: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
    target_fraction: float = 0.99  # convergence target: this fraction of the better final accuracy
    # Mean-Var "within budget": every block <= C_loc + this. Its per-block controller oscillates
    # around the budget; a loose tolerance favours Mean-Var, the side the paper claims is slower.
    budget_tolerance_bits: float = 1.0
    # The study in results/study ran with the first Mean-KL form; the presets keep it so that
    # it can be reproduced. (The product's default is "free-mean".)
    mean_kl_form: str = "bounded-mean"
    # Mean-Var's trials train without this many training examples and are judged on them, so
    # that its settings are chosen without the test set; 0: judged on the test set, as
    # results/study was.
    validation_examples: int = 0

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))  # tuples become lists, as in the saved file


PRESETS = {
    # Minutes, not hours: the slow integration test's preset. Short schedules, big coding groups.
    "quick": StudyConfig(model="lenet5", dataset="mnist", budget="1.5KB", seeds=3, steps=600, eval_every=100,
                         blocks_per_group=125, retrain_steps=10, eps_betas=(1e-2,), mean_var_lrs=(1e-3, 1e-2),
                         sweep_budgets=("3KB",)),
    "full": StudyConfig(model="lenet5", dataset="mnist", budget="1.5KB", seeds=3, steps=4000, eval_every=250,
                        blocks_per_group=25, retrain_steps=50, eps_betas=(1e-3, 3e-3, 1e-2), mean_var_lrs=(1e-3, 1e-2),
                        sweep_budgets=("1KB", "2KB", "3KB")),
}


@dataclass(frozen=True)
class RunSpec:
    param: str
    budget: str
    seed: int
    eps_beta: float | None  # Mean-Var only
    lr: float | None = None  # None: BASE_LR of the parameterisation
    tuning: bool = False  # trained without the validation examples, evaluated on them, not on the test set

    @property
    def name(self) -> str:
        lr = f"_lr{self.lr:g}" if self.lr is not None else ""
        eps = f"_eps{self.eps_beta:g}" if self.eps_beta is not None else ""
        return f"{self.param}_{self.budget}{lr}{eps}_seed{self.seed}{'_validation' if self.tuning else ''}"

    @property
    def effective_lr(self) -> float:
        return self.lr if self.lr is not None else BASE_LR[self.param]


def get_preset(name: str) -> StudyConfig:
    if name not in PRESETS:
        raise InvalidInput(f"unknown study preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def check_config(config: StudyConfig) -> None:
    """Every error the settings can cause, before any work."""
    if config.model not in model_names():
        raise InvalidInput(f"unknown model {config.model!r}; choose one of {', '.join(model_names())}")
    if config.dataset not in data_module.DATASETS:
        raise InvalidInput(f"unknown dataset {config.dataset!r}; choose one of {', '.join(data_module.DATASETS)}")
    if config.seeds < 1 or config.steps < 1 or config.eval_every < 1:
        raise InvalidInput("seeds, steps and eval_every must be at least 1")
    model = create_model(config.model)
    shapes = {n: tuple(p.shape) for n, p in select_parameters(model).items()}
    for budget in (config.budget, *config.sweep_budgets):
        # Builds the block layout: a budget too small or too large for the model fails here.
        BlockLayout(shapes, get_model_spec(config.model).group_sizes,
                    num_blocks_for(parse_budget_bits(budget), 16), 0, 0)


def open_study(out: Path, config: StudyConfig, preset: str) -> None:
    """Create ``out`` for this study, or check that it already holds this very study."""
    identity = {"preset": preset, "config": config.to_dict()}
    settings = out / "study.json"
    if settings.exists():
        saved = json.loads(settings.read_text())
        if {k: saved.get(k) for k in identity} != identity:
            raise InvalidInput(
                f"{out} holds a different study (preset {saved.get('preset')!r}, other settings); "
                "choose another output directory, or delete it to start over"
            )
        return
    if out.exists() and any(out.iterdir()):
        raise InvalidInput(f"{out} is not empty and holds no study; choose an empty or new output directory")
    out.mkdir(parents=True, exist_ok=True)
    files.write_json(settings, {**identity, **provenance()})


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
    # The study retrains at the end rate of the training schedule, as when it was made.
    return CompressConfig(
        index_budget=spec.budget, param=spec.param, mean_kl_form=config.mean_kl_form,
        **({"eps_beta": spec.eps_beta} if spec.eps_beta is not None else {}),
        steps=config.steps, lr=spec.effective_lr, checkpoint_every=config.eval_every,
        blocks_per_group=config.blocks_per_group, retrain_steps=config.retrain_steps,
        retrain_lr=spec.effective_lr * TrainConfig.final_lr_fraction, seed=spec.seed,
    )


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
    curve = [p for p in (json.loads(path.read_text()) if path.exists() else []) if p["step"] <= trainer.step]
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


def _objective_curve(run_dir: Path, num_examples: int, eval_every: int) -> list[dict]:
    """The training objective averaged over each window of ``eval_every`` steps: the loss
    optimised (Mean-Var's includes its betas) and the negative ELBO per example (beta = 1)."""
    rows = [json.loads(line) for line in (run_dir / METRICS_NAME).read_text().splitlines() if line.strip()]
    windows: dict[int, list[dict]] = {}
    for row in rows:
        windows.setdefault((row["step"] - 1) // eval_every, []).append(row)
    out = []
    for index, window in sorted(windows.items()):
        n = len(window)
        out.append({
            "step": window[-1]["step"], "seconds": window[-1]["seconds"],
            "loss": sum(r["loss"] for r in window) / n,
            "negative_elbo": sum(r["nll"] + r["kl_bits_total"] * LN2 / num_examples for r in window) / n,
            "blocks_over_budget": window[-1]["blocks_over_budget"],
        })
    return out


def _posterior_tails(vmodel: VariationalModel) -> dict:
    """Tails of the trained posterior, per free variable: mu / s, sigma / s, KL in bits."""
    real = vmodel.layout.is_real
    with torch.no_grad():
        mu, sigma, s = vmodel.block_mean_std()
        kl_bits = kl_nats(mu.double(), sigma.double(), s.double()) / LN2
    return {"mu_over_s": tail_summary((mu / s)[real]), "sigma_over_s": tail_summary((sigma / s)[real]),
            "kl_bits": tail_summary(kl_bits[real])}


def _pruning_curves(model: torch.nn.Module, vmodel: VariationalModel, test, fractions, seed: int) -> dict:
    """Test accuracy after global pruning of the coded weight tensors (not biases), no
    retraining, in three orders: smallest magnitude first, lowest posterior signal-to-noise
    |mu| / sigma first (each block's posterior as it was coded), and a seeded random order."""
    with torch.no_grad():
        mu, sigma, _ = (vmodel.layout.blocks_to_tensors(t) for t in vmodel.block_mean_std())
    params = dict(model.named_parameters())
    weights = {n: params[n].detach().clone() for n in mu if params[n].dim() > 1}
    orders = {
        "magnitude": lambda f: prune_by_magnitude(weights, f),
        "signal_to_noise": lambda f: prune_by_signal_to_noise(weights, mu, sigma, f),
        # The same permutation at every fraction (purpose 5; 1 to 4 are training's), so the
        # pruned sets are nested as the other orders' are.
        "random": lambda f: prune_at_random(weights, f, derived_generator(seed, 5)),
    }
    curves = {}
    for order, prune in orders.items():
        curves[order] = []
        for fraction in fractions:
            with torch.no_grad():
                for name, value in prune(fraction).items():
                    params[name].copy_(value)
            curves[order].append({"fraction": fraction, "test_accuracy": accuracy(model, test)})
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    return curves


def execute_run(config: StudyConfig, spec: RunSpec, out: Path, data_dir: str | None = None,
                progress: bool = False) -> dict:
    """Train, code, decode and analyse one run; resumable at every stage."""
    run_dir = out / "runs" / spec.name
    done = run_dir / "run.json"
    if done.exists():
        return json.loads(done.read_text())
    test = _data(config, spec, data_dir)[1]  # the validation split for a tuning run
    trainer = _trainer(config, spec, run_dir, data_dir)
    trained_path = run_dir / "trained.json"
    if trained_path.exists():
        trained = json.loads(trained_path.read_text())
    else:
        curve = _train_with_curve(trainer, run_dir, test, config.eval_every, progress)
        trained = {
            "curve": curve,
            "objective": _objective_curve(run_dir, trainer.num_examples, config.eval_every),
            "final": evaluate_posterior(trainer.vmodel, test, spec.seed),
            "step_ms": round(trainer.step_ms(), 2), "train_seconds": round(trainer.seconds, 2),
            "tails": _posterior_tails(trainer.vmodel), "kl": trainer.vmodel.kl_summary(),
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
        "size_bytes": result.size_bytes,
        "decoded_test_accuracy": accuracy(decoded, test),
        "coding_seconds": round(coding_seconds, 2),
        "decoded_tails": tail_summary((vmodel.coded_values / s)[real]),
    }
    pruning = _pruning_curves(decoded, vmodel, test, config.prune_fractions, spec.seed)
    run["pruning"] = pruning.pop("magnitude")
    run.update({f"pruning_{order}": curve for order, curve in pruning.items()})
    files.write_json(done, run, indent=1)
    return run


# -- the whole study ----------------------------------------------------------------------------
def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)


def _run_all(config, specs, out, data_dir, jobs, log) -> dict[RunSpec, dict]:
    results: dict[RunSpec, dict] = {}
    if jobs == 1:
        for spec in specs:
            results[spec] = execute_run(config, spec, out, data_dir, progress=True)
            log(_done_line(spec, results[spec]))
        return results
    # Parallel runs with one thread each: two 2-thread processes on 2 cores stall each other.
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_worker_init,
                             initargs=(1,)) as pool:
        futures = {pool.submit(execute_run, config, spec, out, data_dir): spec for spec in specs}
        for future in as_completed(futures):
            spec = futures[future]
            results[spec] = future.result()
            log(_done_line(spec, results[spec]))
    return results


def _done_line(spec: RunSpec, result: dict) -> str:
    line = (f"  done: {spec.name}: posterior sample {100 * result['final']['test_accuracy_sample']:.2f}%, "
            f"largest block KL {result['kl']['kl_bits_per_block_max']:.1f} bits")
    if "decoded_test_accuracy" in result:
        line += f"; file {result['size_bytes']} bytes, decoded {100 * result['decoded_test_accuracy']:.2f}%"
    return line


def choose_mean_var(trials: dict[RunSpec, dict]) -> RunSpec:
    """The Mean-Var trial (learning rate and annealing rate) whose seed-0 file decodes to the
    best accuracy (on the validation split, or for a study without one the test set): the
    end-to-end criterion. (Choosing by the budget alone picks collapsed
    runs: a rate fast enough to meet the budget in a short schedule can drive the network to
    chance.)"""
    return max(trials, key=lambda spec: trials[spec]["decoded_test_accuracy"])


def run_study(config: StudyConfig, out: Path, preset: str, data_dir: str | None = None, jobs: int = 1,
              log=print) -> dict:
    """Every run of the study (resuming what is done), then the figures as JSON."""
    from .figures import write_figures

    check_config(config)
    _split(config.dataset, "train", data_dir)  # a missing dataset fails before any work
    open_study(out, config, preset)
    started = time.perf_counter()
    seeds = range(config.seeds)
    default_lr = BASE_LR["mean-var"]
    tuning = config.validation_examples > 0
    trials = [RunSpec("mean-var", config.budget, 0, eps, None if lr == default_lr else lr, tuning=tuning)
              for lr in config.mean_var_lrs for eps in config.eps_betas]
    mean_kl = [RunSpec("mean-kl", config.budget, seed, None) for seed in seeds]
    mean_kl += [RunSpec("mean-kl", budget, 0, None) for budget in config.sweep_budgets]
    log(f"study {preset}: {len(trials)} Mean-Var trials (learning and annealing rates) and {len(mean_kl)} Mean-KL runs")
    first = _run_all(config, trials + mean_kl, out, data_dir, jobs, log)
    chosen = choose_mean_var({t: first[t] for t in trials})
    log(f"Mean-Var setting chosen: learning rate {chosen.effective_lr:g}, annealing rate {chosen.eps_beta:g}")
    # Trials judged on the test set double as the comparison's seed-0 run; validation trials do not.
    mean_var = [replace(chosen, seed=seed, tuning=False) for seed in seeds if tuning or seed != 0]
    mean_var += [replace(chosen, budget=budget, tuning=False) for budget in config.sweep_budgets]
    second = _run_all(config, mean_var, out, data_dir, jobs, log)
    runs = {**first, **second}
    summary = {
        "preset": preset, "config": config.to_dict(),
        "mean_var_chosen": {"lr": chosen.effective_lr, "eps_beta": chosen.eps_beta},
        "lr": {"mean-kl": BASE_LR["mean-kl"], "mean-var": chosen.effective_lr},
        "annealing_trials": [{"lr": t.effective_lr, "eps_beta": t.eps_beta, **_trial_summary(runs[t])} for t in trials],
        "runs": {spec.name: {**runs[spec], "spec": {**asdict(spec), "lr": spec.effective_lr}} for spec in runs},
        "seconds_this_invocation": round(time.perf_counter() - started, 1),
        **provenance(),
    }
    write_figures(summary, out / "json")
    return summary


def _trial_summary(run: dict) -> dict:
    return {"final": run["final"], "kl_bits_per_block_max": run["kl"]["kl_bits_per_block_max"],
            "train_seconds": run["train_seconds"], "decoded_test_accuracy": run["decoded_test_accuracy"]}


__all__ = ["PRESETS", "StudyConfig", "RunSpec", "get_preset", "run_study", "execute_run", "choose_mean_var"]
