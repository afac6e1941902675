"""The paper's four claims, judged from the figures' JSON by rules fixed before the runs.

Each rule compares Mean-KL with Mean-Var and calls a difference real only when it is larger than
the spread over seeds (the two standard deviations added in quadrature); a claim is
"supported", "not supported" or "mixed" (true for some budgets or measures and not others).
Why these rules:

- *Convergence about twice as fast.* The paper's own words; a ratio of steps to the accuracy
  target of at least 1.5 counts as supported, 1.1 to 1.5 as mixed (faster, not twice), below
  1.1 as not supported. Mean-Var counts as converged only once every block is within its
  budget, since before that its file would not fit; if Mean-Var never gets there while Mean-KL
  always does, Mean-KL converged faster by any ratio. Steps, not seconds: a Mean-KL step costs
  more, and the seconds are reported beside.
- *Performance kept after compression.* Judged at equal file size, budget by budget: the
  decoded file's test accuracy, Mean-KL against Mean-Var; as good within the noise counts as
  kept, since the claim is that Mean-KL loses nothing, not that it wins.
- *Heavier tails, more meaningful distributions.* Heavier: the excess kurtosis of the decoded
  weights and of the posterior means is larger for Mean-KL. More meaningful: pruning by the
  posterior's signal-to-noise |mu|/sigma keeps more accuracy, over the pruning range, for
  Mean-KL than for Mean-Var (sigma then tells which weights matter).
- *More robust to pruning.* The mean test accuracy over the pruning range (global magnitude
  pruning of the decoded weights, no retraining), Mean-KL against Mean-Var.
"""

from __future__ import annotations

import math

from .stats import mean_and_spread

SUPPORTED, NOT_SUPPORTED, MIXED = "supported", "not supported", "mixed"
TWICE_AS_FAST, FASTER = 1.5, 1.1


def _difference(kl: dict, var: dict) -> tuple[float, float]:
    """Mean-KL minus Mean-Var, and the noise it must exceed to count."""
    return kl["mean"] - var["mean"], math.hypot(kl["std"], var["std"])


def _compare(pairs: list[tuple[dict, dict]]) -> str:
    """Mean-KL larger than Mean-Var beyond the noise in every pair, in none, or in some."""
    better = [d > noise for d, noise in (_difference(kl, var) for kl, var in pairs)]
    return SUPPORTED if all(better) else NOT_SUPPORTED if not any(better) else MIXED


def _pct(stat: dict) -> str:
    return f"{100 * stat['mean']:.2f} ± {100 * stat['std']:.2f}%"


def convergence(figure: dict) -> dict:
    kl, var = figure["variants"]["mean-kl"], figure["variants"]["mean-var"]
    seeds = len(kl["seeds"])
    ratio = figure["ratio_by_seed"]["steps_to_target"]
    if kl["seeds_reaching_target"] < seeds:
        verdict = NOT_SUPPORTED
    elif var["seeds_reaching_target"] == 0:
        verdict = SUPPORTED
    else:
        verdict = SUPPORTED if ratio["mean"] >= TWICE_AS_FAST else MIXED if ratio["mean"] >= FASTER else NOT_SUPPORTED

    def steps(v):
        return (f"{v['steps_to_target']['mean']:.0f} ± {v['steps_to_target']['std']:.0f} steps "
                f"({v['seeds_reaching_target']}/{seeds} seeds)" if v["steps_to_target"] else f"never (0/{seeds} seeds)")

    numbers = f"to {100 * figure['target_accuracy']:.2f}%: Mean-KL {steps(kl)}, Mean-Var {steps(var)}"
    if ratio:
        numbers += f"; ratio Mean-Var / Mean-KL {ratio['mean']:.2f} ± {ratio['std']:.2f} by seed"
    seconds = figure["ratio_by_seed"]["seconds_to_target"]
    if seconds:
        numbers += f" ({seconds['mean']:.2f} ± {seconds['std']:.2f} in seconds)"
    return {"claim": "Mean-KL converges about twice as fast", "verdict": verdict, "numbers": numbers}


def compression(figure: dict) -> dict:
    pairs, parts = [], []
    for budget, variants in figure["by_budget"].items():
        kl, var = variants["mean-kl"]["test_accuracy_decoded"], variants["mean-var"]["test_accuracy_decoded"]
        pairs.append((kl, var))
        parts.append(f"{budget}: Mean-KL {_pct(kl)}, Mean-Var {_pct(var)}")
    # "Kept" means at least as good: a tie within the noise counts for the claim.
    kept = [d >= -noise for d, noise in (_difference(kl, var) for kl, var in pairs)]
    verdict = SUPPORTED if all(kept) else NOT_SUPPORTED if not any(kept) else MIXED
    return {"claim": "predictive performance is kept after compression", "verdict": verdict,
            "numbers": "decoded file, test accuracy: " + "; ".join(parts)}


def _area(curves: dict) -> dict:
    """Mean accuracy over the pruning range, per seed, with its spread."""
    return mean_and_spread([sum(seed) / len(seed) for seed in curves["seeds"]])


def tails(tail_figure: dict, pruning_figure: dict) -> dict:
    kurtosis = {q: (tail_figure["variants"]["mean-kl"][q]["excess_kurtosis"],
                    tail_figure["variants"]["mean-var"][q]["excess_kurtosis"]) for q in ("decoded_over_s", "mu_over_s")}
    heavier = _compare(list(kurtosis.values()))
    orders = pruning_figure.get("orders", {})
    snr = {p: _area(orders[p]["signal_to_noise"]) for p in ("mean-kl", "mean-var")
           if "signal_to_noise" in orders.get(p, {})}
    meaningful = _compare([(snr["mean-kl"], snr["mean-var"])]) if len(snr) == 2 else None
    parts = [verdict for verdict in (heavier, meaningful) if verdict is not None]
    verdict = parts[0] if len(set(parts)) == 1 else MIXED
    names = {"decoded_over_s": "decoded weights", "mu_over_s": "posterior means"}
    numbers = "excess kurtosis, Mean-KL vs Mean-Var: " + "; ".join(
        f"{names[name]} {kl['mean']:.2f} ± {kl['std']:.2f} vs {var['mean']:.2f} ± {var['std']:.2f}"
        for name, (kl, var) in kurtosis.items())
    if meaningful is not None:
        numbers += (f"; pruning by abs(mu)/sigma, mean accuracy over the range: Mean-KL {_pct(snr['mean-kl'])}, "
                    f"Mean-Var {_pct(snr['mean-var'])}")
    return {"claim": "heavier tails, more meaningful distributions", "verdict": verdict, "numbers": numbers}


def pruning(figure: dict) -> dict:
    area = {p: _area(figure["variants"][p]) for p in ("mean-kl", "mean-var")}
    difference, noise = _difference(area["mean-kl"], area["mean-var"])
    verdict = SUPPORTED if difference > noise else NOT_SUPPORTED  # a tie is not "more robust"
    at = {f: i for i, f in enumerate(figure["fractions"])}
    shape = ""
    if 0.2 in at:
        drop = {p: figure["variants"][p]["by_fraction"][0]["mean"] - figure["variants"][p]["by_fraction"][at[0.2]]["mean"]
                for p in area}
        shape = (f"; accuracy lost by 20% pruned: Mean-KL {100 * drop['mean-kl']:.2f} points, "
                 f"Mean-Var {100 * drop['mean-var']:.2f} points")
    return {"claim": "compressed samples are more robust to pruning", "verdict": verdict,
            "numbers": f"mean accuracy over the pruning range (magnitude): Mean-KL {_pct(area['mean-kl'])}, "
                       f"Mean-Var {_pct(area['mean-var'])}{shape}"}


def verdicts(figures: dict) -> dict:
    """From the figures (as written to JSON) to the four verdicts."""
    return {"claims": [convergence(figures["convergence"]), compression(figures["compression"]),
                       tails(figures["tails"], figures["pruning"]), pruning(figures["pruning"])],
            "rules": __doc__}
