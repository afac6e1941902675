"""From the runs of a study to one JSON file per figure; the report reads only these files.

    convergence.json    test accuracy and objective against steps and seconds; steps to target
    annealing.json      Mean-Var's annealing rates tried, and the one chosen
    compression.json    test accuracy of the posterior mean, a sample and the decoded file, per budget
    ablation.json       Mean-KL's other form against its default one
    tails.json          histograms, excess kurtosis and tail index of four quantities
    pruning.json        test accuracy against the fraction of weights pruned
    size_vs_error.json  our files at several budgets, with the published points
    cost.json           the seconds the runs took
    verdicts.json       the paper's four claims judged from the figures above (verdicts.py)
"""

from __future__ import annotations

from pathlib import Path

from .. import files
from ..published import LENET5_MNIST
from .stats import mean_and_spread
from .verdicts import verdicts

PARAMS = ("mean-var", "mean-kl")
LABELS_BY_PARAM = {"mean-var": "Mean-Var", "mean-kl": "Mean-KL"}
TAIL_QUANTITIES = ("decoded_over_s", "mu_over_s", "sigma_over_s", "kl_bits")
# The published LeNet-5 points belong next to either of our LeNet-5s on MNIST.
PUBLISHED_FOR = {("lenet5", "mnist"), ("lenet5-relu", "mnist")}


def _compared(summary: dict, run: dict) -> bool:
    """A run of the comparison: Mean-KL, or Mean-Var at the chosen annealing rate."""
    chosen = summary["mean_var_chosen"]
    if run["spec"].get("tuning") or run["spec"].get("form"):  # a trial on the validation split; the ablation
        return False
    return run["spec"]["param"] == "mean-kl" or (run["spec"]["lr"], run["spec"]["eps_beta"]) == (
        chosen["lr"], chosen["eps_beta"])


def _main_runs(summary: dict, param: str, budget: str | None = None) -> list[dict]:
    """The runs of the comparison at ``budget`` (default: the main one), every seed, by seed."""
    budget = budget or summary["config"]["budget"]
    runs = [r for r in summary["runs"].values()
            if r["spec"]["param"] == param and r["spec"]["budget"] == budget and _compared(summary, r)]
    return sorted(runs, key=lambda r: r["spec"]["seed"])


def _first_step(curve: list[dict], condition) -> dict | None:
    return next((p for p in curve if condition(p)), None)


def _ratios(variants: dict, key: str) -> dict | None:
    """Mean-Var / Mean-KL of ``key``, seed by seed where both got there, with the spread."""
    pairs = [(v[key], k[key]) for v, k in zip(variants["mean-var"]["seeds"], variants["mean-kl"]["seeds"])
             if v[key] is not None and k[key] is not None and k[key] > 0]
    return mean_and_spread([v / k for v, k in pairs]) if pairs else None


def convergence(summary: dict) -> dict:
    config = summary["config"]
    budget_limit = 16 + config["budget_tolerance_bits"]
    runs = {p: _main_runs(summary, p) for p in PARAMS}
    finals = {p: mean_and_spread([r["curve"][-1]["test_accuracy_sample"] for r in runs[p]])["mean"] for p in PARAMS}
    target = config["target_fraction"] * max(finals.values())
    # The objective both variants reach: the worse of their final values.
    target_objective = max(mean_and_spread([r["objective"][-1]["negative_elbo"] for r in runs[p]])["mean"]
                           for p in PARAMS)
    variants = {}
    for param in PARAMS:
        seeds = []
        for run in runs[param]:
            curve = run["curve"]
            kl_at = {p["step"]: p["kl_bits_per_block_max"] for p in curve}
            within = (lambda p: kl_at.get(p["step"], float("inf")) <= budget_limit)
            budget_met = _first_step(curve, within)
            reached = _first_step(curve, lambda p: p["test_accuracy_sample"] >= target and within(p))
            objective = _first_step(run["objective"], lambda p: p["negative_elbo"] <= target_objective and within(p))
            seeds.append({
                "seed": run["spec"]["seed"], "lr": run["spec"]["lr"], "eps_beta": run["spec"]["eps_beta"],
                "curve": curve,
                "objective": run["objective"],
                "steps_to_target": reached["step"] if reached else None,
                "seconds_to_target": reached["seconds"] if reached else None,
                "steps_to_objective": objective["step"] if objective else None,
                "seconds_to_objective": objective["seconds"] if objective else None,
                "budget_met_step": budget_met["step"] if budget_met else None,
                "step_ms": run["step_ms"],
            })
        reached_steps = [s["steps_to_target"] for s in seeds if s["steps_to_target"] is not None]
        reached_seconds = [s["seconds_to_target"] for s in seeds if s["seconds_to_target"] is not None]
        variants[param] = {
            "seeds": seeds,
            "final_sample_accuracy": finals[param],
            "seeds_reaching_target": len(reached_steps),
            "seeds_reaching_objective": sum(s["steps_to_objective"] is not None for s in seeds),
            "steps_to_target": mean_and_spread(reached_steps) if reached_steps else None,
            "seconds_to_target": mean_and_spread(reached_seconds) if reached_seconds else None,
        }
    ratio = ratio_seconds = None
    if all(variants[p]["steps_to_target"] for p in PARAMS):
        ratio = variants["mean-var"]["steps_to_target"]["mean"] / variants["mean-kl"]["steps_to_target"]["mean"]
        ratio_seconds = (variants["mean-var"]["seconds_to_target"]["mean"]
                         / variants["mean-kl"]["seconds_to_target"]["mean"])
    return {
        "target_fraction": config["target_fraction"], "target_accuracy": target,
        "target_negative_elbo": target_objective,
        "budget_tolerance_bits": config["budget_tolerance_bits"], "steps": summary["schedule_options"]["steps"],
        "variants": variants, "ratio_steps_mean_var_over_mean_kl": ratio,
        "ratio_seconds_mean_var_over_mean_kl": ratio_seconds,
        "ratio_by_seed": {key: _ratios(variants, key) for key in
                          ("steps_to_target", "seconds_to_target", "steps_to_objective", "seconds_to_objective")},
        "note": "steps to target: first measurement with posterior-sample test accuracy >= target (or, for the "
                "objective, the negative ELBO averaged over the window <= the worse of the two final values) and, "
                "for Mean-Var, every block's KL within bits_per_block + tolerance; runs that never get there are "
                "counted in seeds_reaching_target, not in the mean; ratios by seed pair seed i with seed i",
    }


def annealing(summary: dict) -> dict:
    trial_runs = {(r["spec"]["lr"], r["spec"]["eps_beta"]): r for r in summary["runs"].values()
                  if r["spec"].get("tuning")}
    trials = [{**trial, "curve": trial_runs.get((trial["lr"], trial["eps_beta"]), {}).get("curve", [])}
              for trial in summary["annealing_trials"]]
    return {"chosen": summary["mean_var_chosen"], "trials": trials, "lr": summary["lr"],
            "rule": "the Mean-Var learning rate and annealing rate whose seed-0 file decodes to the best accuracy "
                    "on a validation split carved from the training data (trained without it); the test set plays "
                    "no part; Mean-KL keeps the product's default learning rate"}


def compression(summary: dict) -> dict:
    """Accuracy of the posterior mean, a posterior sample and the decoded file, per budget."""
    budgets = {}
    for budget in [summary["config"]["budget"], *summary["config"]["other_budgets"]]:
        out = {}
        for param in PARAMS:
            seeds = [{"seed": r["spec"]["seed"], "size_bytes": r["size_bytes"],
                      "test_accuracy_mean": r["final"]["test_accuracy_mean"],
                      "test_accuracy_sample": r["final"]["test_accuracy_sample"],
                      "test_accuracy_decoded": r["decoded_test_accuracy"]} for r in _main_runs(summary, param, budget)]
            out[param] = {"seeds": seeds, **{
                key: mean_and_spread([s[key] for s in seeds])
                for key in ("size_bytes", "test_accuracy_mean", "test_accuracy_sample", "test_accuracy_decoded")}}
        budgets[budget] = out
    return {"budget": summary["config"]["budget"], "variants": budgets[summary["config"]["budget"]],
            "by_budget": budgets}


def ablation(summary: dict) -> dict:
    """Mean-KL's other form against the default form, seed 0 at the main budget."""
    config = summary["config"]
    other = [r for r in summary["runs"].values() if r["spec"].get("form")]
    default = [r for r in _main_runs(summary, "mean-kl") if r["spec"]["seed"] == 0]
    row = lambda r: {"form": r["spec"].get("form") or "default", "size_bytes": r["size_bytes"],
                     "test_accuracy_mean": r["final"]["test_accuracy_mean"],
                     "test_accuracy_sample": r["final"]["test_accuracy_sample"],
                     "test_accuracy_decoded": r["decoded_test_accuracy"]}
    return {"budget": config["budget"], "forms": [row(r) for r in default + other],
            "note": "Mean-KL's two forms, seed 0, the same schedule and budget"}


def tails(summary: dict) -> dict:
    out = {}
    for param in PARAMS:
        runs = _main_runs(summary, param)
        per_quantity = {}
        for quantity in TAIL_QUANTITIES:
            stats = [r["decoded_tails"] if quantity == "decoded_over_s" else r["tails"][quantity] for r in runs]
            per_quantity[quantity] = {
                "excess_kurtosis": mean_and_spread([s["excess_kurtosis"] for s in stats]),
                "hill_tail_index": mean_and_spread([s["hill_tail_index"] for s in stats]),
                "histogram_seed": runs[0]["spec"]["seed"],
                "histogram": stats[0]["histogram"],
            }
        out[param] = per_quantity
    return {"variants": out, "note": "per free variable, in units of its tensor's prior scale s "
                                     "(the KL in bits); tail index: Hill estimator on the top 5% of |x|"}


# Beside magnitude (the run's "pruning"), the orders that test whether sigma ranks weights by importance.
PRUNING_ORDERS = {"signal_to_noise": "pruning_signal_to_noise", "random": "pruning_random"}


def _by_fraction(runs: list[dict], key: str, fractions) -> dict:
    per_seed = [[p["test_accuracy"] for p in r[key]] for r in runs]
    return {"seeds": per_seed,
            "by_fraction": [mean_and_spread([acc[i] for acc in per_seed]) for i in range(len(fractions))]}


def pruning(summary: dict) -> dict:
    fractions = summary["config"]["prune_fractions"]
    out, orders = {}, {}
    for param in PARAMS:
        runs = _main_runs(summary, param)
        out[param] = _by_fraction(runs, "pruning", fractions)  # magnitude
        orders[param] = {order: _by_fraction(runs, key, fractions) for order, key in PRUNING_ORDERS.items()
                         if all(key in r for r in runs)}
    return {"fractions": fractions, "variants": out, "orders": orders,
            "note": "global pruning of the decoded weights (biases kept), no retraining; variants: smallest "
                    "magnitude first; orders: also lowest posterior |mu|/sigma first and a seeded random order"}


def size_vs_error(summary: dict) -> dict:
    config = summary["config"]
    ours = []
    for param in PARAMS:
        for budget in [config["budget"], *config["other_budgets"]]:
            runs = _main_runs(summary, param, budget)
            ours.append({"param": param, "budget": budget, "seeds": [r["spec"]["seed"] for r in runs],
                         "size_bytes": max(r["size_bytes"] for r in runs),
                         "test_error": mean_and_spread([1 - r["decoded_test_accuracy"] for r in runs])})
    published = LENET5_MNIST if (config["model"], config["dataset"]) in PUBLISHED_FOR else []
    baselines = summary.get("baselines")
    return {"ours": sorted(ours, key=lambda p: (p["param"], p["size_bytes"])), "published": published,
            # Post-training baselines of a plainly trained network (benchmarks/baselines.py): each
            # one's settings on its validation Pareto front, scored on the test set.
            "baselines": {method: [{"size_bytes": p["size_bytes"], "test_error": p["test_error"]} for p in b["chosen"]]
                          for method, b in baselines["baselines"].items()} if baselines else {},
            "baselines_plain_test_error": baselines["plain_test_error"] if baselines else None,
            "note": "our sizes are the bytes of our files (the largest over seeds); MIRACLE's published sizes "
                    "count the indices only; the baselines' are the bytes of their payloads"}


def cost(summary: dict) -> dict:
    """What the runs cost: training and coding seconds summed over runs, and the part's wall
    time as its invocations measured it (``runner.WallTimeLog``)."""
    def kind(spec: dict) -> str:
        return ("Mean-Var trials" if spec.get("tuning") else "Mean-KL ablation" if spec.get("form")
                else LABELS_BY_PARAM[spec["param"]])

    seconds: dict[str, float] = {}
    for run in summary["runs"].values():
        k = kind(run["spec"])
        seconds[k] = seconds.get(k, 0.0) + run["train_seconds"] + run["coding_seconds"]
    invocations = summary.get("wall_time", [])
    # From scratch: the first logged invocation found no finished run (parts run before the log
    # existed have none, or start with runs already made).
    from_scratch = bool(invocations) and invocations[0]["runs_finished_before"] == 0
    return {"runs": len(summary["runs"]), "process_seconds": round(sum(seconds.values()), 1),
            "process_seconds_by_kind": {k: round(v, 1) for k, v in seconds.items()},
            "wall_seconds_from_scratch": round(sum(i["seconds"] for i in invocations), 1) if from_scratch else None,
            "invocations": [{k: i[k] for k in ("date", "git_commit", "jobs", "seconds", "runs_finished")}
                            for i in invocations],
            "note": "process seconds: training and coding summed over runs, evaluation not counted; wall "
                    "seconds: the invocations' own clocks over their runs, evaluation included, not the seconds "
                    "of drawing the report after"}


FIGURES = {"convergence": convergence, "annealing": annealing, "compression": compression, "ablation": ablation,
           "tails": tails, "pruning": pruning, "size_vs_error": size_vs_error, "cost": cost}


# Every JSON file of a study: the figures, and the verdicts drawn from them.
FIGURE_FILES = (*FIGURES, "verdicts")


def write_figures(summary: dict, json_dir: Path) -> None:
    json_dir.mkdir(parents=True, exist_ok=True)
    provenance = {k: summary[k] for k in ("command", "git_commit", "date", "machine") if k in summary}
    context = {"preset": summary["preset"], "config": summary["config"],
               "schedule_options": summary["schedule_options"], **provenance}
    made = {name: {**context, **make(summary)} for name, make in FIGURES.items()}
    made["verdicts"] = {**context, **verdicts(made)}
    for name, figure in made.items():
        files.write_json(json_dir / f"{name}.json", figure, indent=1)
