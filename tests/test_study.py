import ctypes
import json
from dataclasses import asdict, replace
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import run_cli
from miracle.config import CompressConfig
from miracle import cli, files
from miracle.errors import InvalidInput, MiracleError
from miracle.provenance import provenance
from miracle.study import StudyConfig, get_preset, part_name, pyplot, run_study, write_index, write_report
from miracle.study.figures import FIGURE_FILES, write_figures
from miracle.study.runner import (RunSpec, WallTimeLog, _mean_kl_runs, _mean_var_runs, _settings, _trainer, _trials,
                                   check_config, choose_mean_var, execute_run, open_study)
from miracle.study.stats import (excess_kurtosis, hill_tail_index, histogram, mean_and_spread,
                                 prune_at_random, prune_by_magnitude, prune_by_signal_to_noise)

# -- statistics on weights whose answer is known ------------------------------------------------


def test_excess_kurtosis_of_known_distributions():
    assert excess_kurtosis(torch.tensor([-1.0, 1.0])) == pytest.approx(-2.0)  # two points: 1 - 3
    g = torch.Generator().manual_seed(0)
    gaussian = torch.randn(400_000, generator=g, dtype=torch.float64)
    u = torch.rand(400_000, generator=g, dtype=torch.float64) - 0.5
    laplace = -torch.sign(u) * torch.log1p(-2 * u.abs())  # inverse CDF of Laplace(0, 1)
    assert excess_kurtosis(gaussian) == pytest.approx(0.0, abs=0.05)
    assert excess_kurtosis(laplace) == pytest.approx(3.0, abs=0.2)
    with pytest.raises(ValueError):
        excess_kurtosis(torch.ones(10))


def test_hill_tail_index_recovers_a_pareto_exponent():
    g = torch.Generator().manual_seed(1)
    for alpha in (1.5, 3.0):
        pareto = torch.rand(200_000, generator=g, dtype=torch.float64).pow(-1 / alpha)
        assert hill_tail_index(pareto) == pytest.approx(alpha, rel=0.05)
    # by hand: top 2 of |x| = 8, 4 above the threshold 2: 1 / mean(ln 4, ln 2) = 1 / (1.5 ln 2)
    values = torch.tensor([1.0, -2.0, 4.0, -8.0] + [0.5] * 36)
    assert hill_tail_index(values, tail_fraction=0.05) == pytest.approx(1 / (1.5 * math.log(2)))


def test_histogram_counts_every_value():
    values = torch.cat([torch.linspace(-1, 1, 1000), torch.tensor([50.0, -50.0])])
    hist = histogram(values, bins=10, quantile_range=0.99)
    assert len(hist["edges"]) == 11 and sum(hist["counts"]) + hist["outside"] == values.numel()
    assert hist["outside"] >= 2


def test_global_magnitude_pruning_zeroes_the_smallest_entries():
    weights = {"a": torch.tensor([3.0, -1.0, 2.0]), "b": torch.tensor([[-4.0, 0.5]])}
    pruned = prune_by_magnitude(weights, 0.4)  # 2 of 5 entries: 0.5 and -1
    assert pruned["a"].tolist() == [3.0, 0.0, 2.0] and pruned["b"].tolist() == [[-4.0, 0.0]]
    assert prune_by_magnitude(weights, 0.0)["a"].tolist() == [3.0, -1.0, 2.0]
    assert all(int(t.count_nonzero()) == 0 for t in prune_by_magnitude(weights, 1.0).values())
    ties = prune_by_magnitude({"w": torch.ones(10)}, 0.3)["w"]
    assert int((ties == 0).sum()) == 3  # exactly the fraction asked, even among ties
    with pytest.raises(ValueError):
        prune_by_magnitude(weights, 1.5)


def test_signal_to_noise_pruning_removes_the_least_certain_weights_first():
    weights = {"a": torch.tensor([3.0, -1.0, 2.0]), "b": torch.tensor([[-4.0, 0.5]])}
    mu = {"a": torch.tensor([3.0, -1.0, 2.0]), "b": torch.tensor([[-4.0, 0.5]])}
    # |mu| / sigma: 30, 10, 0.2, 4, 50 -> the large weight 2.0 goes first, the small 0.5 last
    sigma = {"a": torch.tensor([0.1, 0.1, 10.0]), "b": torch.tensor([[-1.0, 0.01]])}
    pruned = prune_by_signal_to_noise(weights, mu, sigma, 0.4)
    assert pruned["a"].tolist() == [3.0, -1.0, 0.0] and pruned["b"].tolist() == [[0.0, 0.5]]
    assert prune_by_magnitude(weights, 0.4)["a"][2] == 2.0  # magnitude would keep it


def test_random_pruning_is_seeded_and_zeroes_the_fraction_asked():
    weights = {"w": torch.arange(1.0, 101.0)}
    first = prune_at_random(weights, 0.3, torch.Generator().manual_seed(5))["w"]
    again = prune_at_random(weights, 0.3, torch.Generator().manual_seed(5))["w"]
    other = prune_at_random(weights, 0.3, torch.Generator().manual_seed(6))["w"]
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert int((first == 0).sum()) == 30 and not torch.equal(first, prune_by_magnitude(weights, 0.3)["w"])


def test_mean_and_spread():
    stat = mean_and_spread([1.0, 2.0, 3.0])
    assert stat == {"mean": 2.0, "std": 1.0, "min": 1.0, "max": 3.0, "n": 3}
    assert mean_and_spread([5.0])["std"] == 0.0


def test_mean_var_choice_is_the_best_decoded_file():
    trials = {RunSpec("mean-var", "1.52KB", 0, 1e-3, 1e-3, tuning=True): {"decoded_test_accuracy": 0.95},
              RunSpec("mean-var", "1.52KB", 0, 3e-3, 1e-2, tuning=True): {"decoded_test_accuracy": 0.97},
              RunSpec("mean-var", "1.52KB", 0, 1e-2, 1e-3, tuning=True): {"decoded_test_accuracy": 0.11}}
    chosen = choose_mean_var(trials)
    assert (chosen.eps_beta, chosen.lr) == (3e-3, 1e-2)
    assert chosen.name == "mean-var_1.52KB_lr0.01_eps0.003_seed0_validation"
    assert RunSpec("mean-kl", "1.52KB", 0, form="bounded-mean").name == "mean-kl-bounded-mean_1.52KB_seed0"


def test_every_trial_diverged_is_a_clear_error():
    trials = {RunSpec("mean-var", "1.52KB", 0, 1e-3, 1.0, tuning=True): {"decoded_test_accuracy": None}}
    with pytest.raises(MiracleError, match="every Mean-Var trial diverged"):
        choose_mean_var(trials)


# -- the report, from JSON alone -------------------------------------------------------------------
FIXTURE_CONFIG = StudyConfig(model="lenet5-relu", dataset="mnist", budget="1.52KB", seeds=2, schedule="demo",
                             eval_every=100, eps_betas=(1e-3, 1e-2), mean_var_lrs=(1e-3,), other_budgets=("3.03KB",),
                             schedule_changes=(("steps", 400),), prune_fractions=(0.0, 0.5, 0.9))


def _fixture_run(param, budget, seed, eps, reach_step, kl_max=16.0, tuning=False, form=None):
    """A run whose sample accuracy jumps from 0.5 to 0.95 at ``reach_step``."""
    curve = [{"step": s, "seconds": s / 10, "test_accuracy_mean": 0.96,
              "test_accuracy_sample": 0.5 if s < reach_step else 0.95,
              "kl_bits_per_block_max": kl_max, "kl_bits_total": 12000.0} for s in range(0, 401, 100)]
    tail = {"excess_kurtosis": 1.0 + seed, "hill_tail_index": 3.0,
            "histogram": {"edges": [-1.0, 0.0, 1.0], "counts": [3, 5], "outside": 0}, "count": 8}
    lr = 1e-2 if param == "mean-kl" else 1e-3
    run = {"spec": {"param": param, "budget": budget, "seed": seed, "eps_beta": eps, "lr": lr, "tuning": tuning,
                    "form": form},
           "curve": curve, "objective": [{"step": s, "seconds": s / 10, "loss": 1.0, "negative_elbo": 1.0 / s,
                                          "blocks_over_budget": 0} for s in range(100, 401, 100)],
           "final": {"test_accuracy_mean": 0.96, "test_accuracy_sample": 0.95}, "step_ms": 100.0,
           "train_seconds": 40.0, "kl": {"kl_bits_per_block_max": kl_max},
           "tails": {q: tail for q in ("mu_over_s", "sigma_over_s", "kl_bits")}}
    run.update(size_bytes=1520 if budget == "1.52KB" else 3030, decoded_test_accuracy=0.94 - (0.01 if form else 0),
               coding_seconds=20.0,
               decoded_tails=tail,
               pruning=[{"fraction": f, "test_accuracy": 0.94 - f / 2} for f in (0.0, 0.5, 0.9)],
               pruning_signal_to_noise=[{"fraction": f, "test_accuracy": 0.94 - f / 4} for f in (0.0, 0.5, 0.9)],
               pruning_random=[{"fraction": f, "test_accuracy": 0.94 - f} for f in (0.0, 0.5, 0.9)])
    return run


def _fixture_summary():
    runs = {}
    for seed in (0, 1):
        for budget in ("1.52KB", "3.03KB"):
            runs[f"kl{seed}-{budget}"] = _fixture_run("mean-kl", budget, seed, None, reach_step=100)
            runs[f"var{seed}-{budget}"] = _fixture_run("mean-var", budget, seed, 1e-2, reach_step=200)
    runs["var-trial"] = _fixture_run("mean-var", "1.52KB", 0, 1e-3, reach_step=400, kl_max=30.0, tuning=True)
    runs["var-trial-chosen"] = _fixture_run("mean-var", "1.52KB", 0, 1e-2, reach_step=200, tuning=True)
    runs["kl-ablation"] = _fixture_run("mean-kl", "1.52KB", 0, None, reach_step=100, form="bounded-mean")
    return {"preset": "fixture", "config": FIXTURE_CONFIG.to_dict(), "schedule_options": FIXTURE_CONFIG.schedule_options(),
            "mean_var_chosen": {"lr": 1e-3, "eps_beta": 1e-2}, "lr": {"mean-kl": 1e-2, "mean-var": 1e-3},
            "annealing_trials": [{"lr": 1e-3, "eps_beta": 1e-3, "final": {"test_accuracy_mean": 0.9, "test_accuracy_sample": 0.8},
                                  "kl_bits_per_block_max": 30.0, "train_seconds": 40.0, "decoded_test_accuracy": 0.5},
                                 {"lr": 1e-3, "eps_beta": 1e-2, "final": {"test_accuracy_mean": 0.96, "test_accuracy_sample": 0.95},
                                  "kl_bits_per_block_max": 16.0, "train_seconds": 40.0, "decoded_test_accuracy": 0.94}],
            "runs": runs, "command": "fixture", "git_commit": "0" * 40,
            "date": "2026-11-24", "machine": "test"}


def test_report_is_built_from_the_json_files_alone(tmp_path):
    write_figures(_fixture_summary(), tmp_path / "json")
    assert sorted(p.stem for p in (tmp_path / "json").iterdir()) == sorted(FIGURE_FILES)
    report_dir = tmp_path / "report"
    report = write_report(tmp_path / "json", report_dir)
    text = report.read_text()
    conv = json.loads((tmp_path / "json" / "convergence.json").read_text())
    assert conv["target_accuracy"] == pytest.approx(0.99 * 0.95)
    assert [s["eps_beta"] for s in conv["variants"]["mean-var"]["seeds"]] == [1e-2, 1e-2]  # the trial of 1e-3 is out
    assert conv["ratio_steps_mean_var_over_mean_kl"] == pytest.approx(2.0)  # 200 steps vs 100
    assert "Steps-to-target ratio Mean-Var / Mean-KL: 2.00" in text
    assert "| 1.52KB | Mean-KL | 1520 | 96.00 ± 0.00 | 95.00 ± 0.00 | 94.00 ± 0.00 |" in text
    assert "| 3.03KB | Mean-Var | 3030 | 96.00 ± 0.00 | 95.00 ± 0.00 | 94.00 ± 0.00 |" in text
    assert "| bounded-mean | 1520 | 96.00 | 95.00 | 93.00 |" in text  # the ablation
    assert "| Mean-KL | 3.03KB | 3030 | 6.00 ± 0.00 | 0, 1 |" in text  # size against error, every seed
    # pruning at 50%, Mean-Var then Mean-KL: magnitude 0.94 - 0.5 / 2, signal-to-noise 0.94 - 0.5 / 4, random 0.94 - 0.5
    assert "| 50 | 69.00 ± 0.00 | 81.50 ± 0.00 | 44.00 ± 0.00 | 69.00 ± 0.00 | 81.50 ± 0.00 | 44.00 ± 0.00 |" in text
    assert "| MIRACLE, highest compression (published) | | 1520 | 0.96 | |" in text
    cost = json.loads((tmp_path / "json" / "cost.json").read_text())  # 11 runs of 40 s training, 20 s coding
    assert cost["process_seconds_by_kind"] == {"Mean-KL": 240.0, "Mean-Var": 240.0, "Mean-Var trials": 120.0,
                                               "Mean-KL ablation": 60.0}
    assert "11 runs, 0.2 hours" in text
    assert cost["wall_seconds_from_scratch"] is None and "wall time from scratch was not measured" in text
    for png in ("convergence_steps", "convergence_seconds", "annealing", "tails", "pruning", "size_vs_error"):
        assert (report_dir / f"{png}.png").read_bytes()[:4] == b"\x89PNG"
        assert f"({png}.png)" in text


def test_the_wall_time_from_scratch_adds_up_the_invocations_and_needs_the_first(tmp_path):
    summary = _fixture_summary()
    summary["wall_time"] = [{"date": "d", "git_commit": "c", "jobs": 2, "runs_finished_before": 0, "seconds": 5400.0,
                             "runs_finished": 7},
                            {"date": "d", "git_commit": "c", "jobs": 2, "runs_finished_before": 7, "seconds": 1800.0,
                             "runs_finished": 4}]
    write_figures(summary, tmp_path / "json")
    assert json.loads((tmp_path / "json" / "cost.json").read_text())["wall_seconds_from_scratch"] == 7200.0
    assert "Wall time from scratch: 2.00 hours, measured, in 2 invocation(s) with --jobs 2." in \
        write_report(tmp_path / "json", tmp_path / "report").read_text()
    summary["wall_time"] = summary["wall_time"][1:]  # the part's first runs were made before any logged invocation
    write_figures(summary, tmp_path / "json")
    assert json.loads((tmp_path / "json" / "cost.json").read_text())["wall_seconds_from_scratch"] is None


def test_the_index_sums_the_wall_time_only_when_every_part_has_it(tmp_path):
    summary = _fixture_summary()
    write_figures(summary, tmp_path / "unmeasured" / "json")
    summary["wall_time"] = [{"date": "d", "git_commit": "c", "jobs": 2, "runs_finished_before": 0, "seconds": 3600.0,
                             "runs_finished": 11}]
    write_figures(summary, tmp_path / "measured" / "json")
    both = write_index(tmp_path, "fixture", [tmp_path / "measured", tmp_path / "unmeasured"]).read_text()
    assert "0.4 hours of training and coding summed over the runs; wall time from scratch measured for 1 of 2 parts" in both
    assert "11 runs, 0.2 hours of training and coding, 1.00 hours of wall time from scratch." in both
    one = write_index(tmp_path, "fixture", [tmp_path / "measured"]).read_text()
    assert "1.00 hours of wall time from scratch, measured." in one


def test_baselines_join_the_size_figure_and_report(tmp_path):
    summary = _fixture_summary()
    summary["baselines"] = {"model": "lenet5-relu", "dataset": "mnist", "plain_test_error": 0.009, "baselines": {
        "pruning + NNCodec": {"chosen": [{"size_bytes": 9000, "validation_error": 0.02, "test_error": 0.021},
                                         {"size_bytes": 20000, "validation_error": 0.01, "test_error": 0.011}],
                              "trials": []}}}
    write_figures(summary, tmp_path / "json")
    size = json.loads((tmp_path / "json" / "size_vs_error.json").read_text())
    assert size["baselines"] == {"pruning + NNCodec": [{"size_bytes": 9000, "test_error": 0.021},
                                                       {"size_bytes": 20000, "test_error": 0.011}]}
    text = write_report(tmp_path / "json", tmp_path / "report").read_text()
    assert "| pruning + NNCodec (post-training, settings chosen on validation) | | 20000 | 1.10 | |" in text
    assert "0.90% test error uncompressed" in text


def test_baselines_of_another_model_are_refused(tmp_path, mnist_root):
    out = tmp_path / "study"
    open_study(out, TINY, "tiny")
    (out / "baselines.json").write_text(json.dumps({"model": "lenet300", "dataset": "mnist", "baselines": {}}))
    with pytest.raises(InvalidInput, match="baselines of lenet300 on mnist"):
        run_study(TINY, out, "tiny", str(mnist_root), log=lambda m: None)
    (out / "baselines.json").write_text("not json")
    with pytest.raises(InvalidInput, match="not a baselines file"):
        run_study(TINY, out, "tiny", str(mnist_root), log=lambda m: None)


def _verdicts(summary, tmp_path) -> dict:
    write_figures(summary, tmp_path)
    claims = json.loads((tmp_path / "verdicts.json").read_text())["claims"]
    return {c["claim"].split()[1] if c["claim"].startswith("Mean-KL") else c["claim"].split()[0]: c for c in claims}


def test_the_verdicts_follow_their_rules_from_the_figures(tmp_path):
    summary = _fixture_summary()
    verdicts = _verdicts(summary, tmp_path / "a")
    assert verdicts["converges"]["verdict"] == "supported"  # Mean-Var needs 200 steps to Mean-KL's 100
    assert "ratio Mean-Var / Mean-KL 2.00 ± 0.00 by seed" in verdicts["converges"]["numbers"]
    assert verdicts["predictive"]["verdict"] == "supported"  # equal files: performance kept
    assert verdicts["heavier"]["verdict"] == "not supported"  # equal kurtosis, equal signal-to-noise pruning
    assert verdicts["compressed"]["verdict"] == "not supported"  # equal pruning curves: not more robust
    # Mean-Var's files better at 3.03 KB only, Mean-KL prunes better, its tails heavier.
    for seed in (0, 1):
        summary["runs"][f"var{seed}-3.03KB"]["decoded_test_accuracy"] = 0.97
        summary["runs"][f"kl{seed}-1.52KB"]["pruning"] = [{"fraction": f, "test_accuracy": 0.94 - f / 10}
                                                          for f in (0.0, 0.5, 0.9)]
        summary["runs"][f"kl{seed}-1.52KB"]["decoded_tails"] = {**summary["runs"][f"kl{seed}-1.52KB"]["decoded_tails"],
                                                                "excess_kurtosis": 9.0 + seed}
        for quantity in ("mu_over_s", "sigma_over_s", "kl_bits"):
            summary["runs"][f"kl{seed}-1.52KB"]["tails"][quantity] = {
                **summary["runs"][f"kl{seed}-1.52KB"]["tails"][quantity], "excess_kurtosis": 9.0 + seed}
    verdicts = _verdicts(summary, tmp_path / "b")
    assert verdicts["predictive"]["verdict"] == "mixed"
    assert verdicts["compressed"]["verdict"] == "supported"
    assert verdicts["heavier"]["verdict"] == "mixed"  # heavier tails, but sigma ranks no better
    for seed in (0, 1):  # Mean-Var's blocks never within budget: it never converges
        summary["runs"][f"var{seed}-1.52KB"] = _fixture_run("mean-var", "1.52KB", seed, 1e-2, 100, kl_max=18.0)
    assert _verdicts(summary, tmp_path / "c")["converges"]["verdict"] == "supported"
    assert "| Mean-KL converges about twice as fast | **supported** |" in write_report(tmp_path / "c", tmp_path).read_text()


def test_mean_var_over_budget_never_reaches_the_target(tmp_path):
    summary = _fixture_summary()
    for seed in (0, 1):
        summary["runs"][f"var{seed}-1.52KB"] = _fixture_run("mean-var", "1.52KB", seed, 1e-2, reach_step=100,
                                                              kl_max=18.0)
    write_figures(summary, tmp_path)
    conv = json.loads((tmp_path / "convergence.json").read_text())
    assert conv["variants"]["mean-var"]["seeds_reaching_target"] == 0
    assert conv["ratio_steps_mean_var_over_mean_kl"] is None
    assert "not defined" in write_report(tmp_path, tmp_path).read_text()


def test_report_without_json_says_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="convergence.json"):
        write_report(tmp_path, tmp_path)


# -- bad input --------------------------------------------------------------------------------------
def test_unknown_preset_is_a_clear_error(tmp_path):
    out = run_cli("study", "--preset", "huge", "--out", str(tmp_path / "s"))
    assert out.returncode == 2 and "unknown study preset 'huge'" in out.stderr and "quick" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "s").exists()


def test_an_unknown_part_is_a_clear_error(tmp_path):
    out = run_cli("study", "--preset", "full", "--part", "resnet-cifar", "--out", str(tmp_path / "s"))
    assert out.returncode == 2 and "no part resnet-cifar" in out.stderr and "lenet300-mnist" in out.stderr
    assert not (tmp_path / "s").exists()


def test_the_full_preset_has_the_three_parts_on_the_shipped_schedule():
    parts = get_preset("full")
    assert [part_name(p) for p in parts] == ["lenet5-relu-mnist", "lenet5-relu-fashion-mnist", "lenet300-mnist"]
    assert {p.schedule for p in parts} == {"demo"} and all(not p.schedule_changes for p in parts)
    assert parts[0].budgets == ("1.52KB", "1KB", "2KB", "3.03KB") and parts[2].budgets == ("1.52KB",)
    assert all(p.seeds >= 3 and p.validation_examples > 0 for p in parts)
    assert parts[2].mean_var_lrs == (3e-3, 1e-2, 3e-2)  # LeNet-300's Mean-Var is best beyond LeNet-5's grid


def test_the_main_preset_makes_exactly_the_full_presets_runs_at_the_main_budget():
    def runs(part, chosen):
        specs = _trials(part) + _mean_kl_runs(part) + _mean_var_runs(part, chosen)
        return {spec.name: _settings(part, spec) for spec in specs}

    for main, full in zip(get_preset("main"), get_preset("full"), strict=True):
        chosen = _trials(full)[-1]
        of_full = {name: s for name, s in runs(full, chosen).items() if s["budget"] == full.budget}
        assert runs(main, chosen) == of_full and main.budgets == (full.budget,)


def test_a_damaged_test_split_is_refused_before_the_folder_is_made(tmp_path, mnist_root):
    data_dir = tmp_path / "data"
    shutil.copytree(mnist_root / "mnist", data_dir / "mnist")
    labels = next((data_dir / "mnist").glob("t10k-labels-idx1-ubyte*"))
    labels.write_bytes(labels.read_bytes()[:100])
    out = run_cli("study", "--preset", "full", "--part", "lenet300-mnist", "--out", str(tmp_path / "s"),
                  "--data-dir", str(data_dir))
    assert out.returncode == 2 and "miracle data fetch" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "s").exists()


def test_a_study_without_matplotlib_is_refused_before_any_run(tmp_path, mnist_root, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed: importing it fails
    with pytest.raises(MiracleError, match=r"pip install 'miracle\[study\]'"):
        pyplot()
    status = cli.main(["study", "--preset", "quick", "--out", str(tmp_path / "s"), "--data-dir", str(mnist_root)])
    assert status == 2 and "miracle[study]" in capsys.readouterr().err and not (tmp_path / "s").exists()


def test_one_budget_size_is_run_once():
    full = get_preset("full")[0]
    assert replace(full, budget="2KB").budgets == ("2KB", "1KB", "3.03KB")
    assert replace(full, budget="1520B").budgets == ("1520B", "1KB", "2KB", "3.03KB")
    assert full.budgets == ("1.52KB", "1KB", "2KB", "3.03KB")
    assert replace(full, other_budgets=("1520B", "2KB", "2000B")).budgets == ("1.52KB", "2KB")  # one size, two spellings


def test_budget_too_small_is_a_clear_error(tmp_path):
    out = run_cli("study", "--preset", "quick", "--budget", "8bits", "--out", str(tmp_path / "s"))
    assert out.returncode == 2 and "budget" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "s").exists()


def test_output_directory_of_another_study_is_refused(tmp_path, mnist_root):
    open_study(tmp_path / "s", FIXTURE_CONFIG, "fixture")
    with pytest.raises(InvalidInput, match="different study"):
        open_study(tmp_path / "s", FIXTURE_CONFIG.__class__(**{**FIXTURE_CONFIG.__dict__, "seeds": 3}), "fixture")
    open_study(tmp_path / "s", FIXTURE_CONFIG, "fixture")  # the same study: fine, it resumes
    out = run_cli("study", "--preset", "quick", "--out", str(tmp_path / "s"), env={"MIRACLE_DATA": str(mnist_root)})
    assert out.returncode == 2 and "holds one part of a study; give the study's own folder" in out.stderr
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(InvalidInput, match="not empty"):
        open_study(tmp_path / "other", FIXTURE_CONFIG, "fixture")


def test_an_output_that_is_a_file_or_damaged_or_unwritable_is_one_line(tmp_path, mnist_root):
    (tmp_path / "file").write_text("mine")
    env = {"MIRACLE_DATA": str(mnist_root)}
    out = run_cli("study", "--preset", "quick", "--out", str(tmp_path / "file"), env=env)
    assert out.returncode == 2 and "is a file" in out.stderr and "Traceback" not in out.stderr
    open_study(tmp_path / "s", FIXTURE_CONFIG, "fixture")
    (tmp_path / "s" / "study.json").write_text('{"preset": ')  # cut short
    with pytest.raises(InvalidInput, match="study.json is damaged"):
        open_study(tmp_path / "s", FIXTURE_CONFIG, "fixture")
    out = run_cli("study", "--preset", "quick", "--out", str(tmp_path / "file" / "s"), env=env)  # cannot be made
    assert out.returncode == 2 and "cannot write" in out.stderr and "Traceback" not in out.stderr


def test_a_folder_holding_only_baselines_becomes_the_study(tmp_path):
    # benchmarks/baselines.py may write a part's baselines before the part's first run.
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "baselines.json").write_text("{}")
    open_study(tmp_path / "s", FIXTURE_CONFIG, "fixture")
    assert (tmp_path / "s" / "study.json").exists() and (tmp_path / "s" / "baselines.json").read_text() == "{}"


def test_check_config_rejects_an_unknown_model():
    with pytest.raises(InvalidInput, match="unknown model"):
        check_config(FIXTURE_CONFIG.__class__(**{**FIXTURE_CONFIG.__dict__, "model": "resnet"}))


# -- real runs: tiny schedules -----------------------------------------------------------------
# A small file (about 100 blocks) keeps coding and pruning quick.
TINY = StudyConfig(model="lenet5-relu", dataset="mnist", budget="300B", seeds=1, schedule="demo", eval_every=4,
                   eps_betas=(1e-2,), mean_var_lrs=(1e-3,), validation_examples=1000, prune_fractions=(0.0, 0.9),
                   schedule_changes=(("steps", 6), ("kl_anneal_steps", 2), ("blocks_per_group", 60),
                                     ("retrain_steps", 2)))


def test_a_run_killed_after_training_codes_without_training_again(tmp_path, mnist_root):
    spec = RunSpec("mean-var", TINY.budget, 0, 1e-2)
    run = execute_run(TINY, spec, tmp_path, str(mnist_root))
    run_dir = tmp_path / "runs" / spec.name
    assert [p["step"] for p in run["curve"]] == [0, 4, 6]  # every 4 steps and at the end
    assert run["curve"][-1]["test_accuracy_sample"] == run["final"]["test_accuracy_sample"]
    assert run["size_bytes"] == (run_dir / "model.mrc").stat().st_size
    assert [p["fraction"] for p in run["pruning"]] == [0.0, 0.9]
    assert run["finished_by"]["git_commit"] == provenance()["git_commit"]
    for order in ("pruning", "pruning_signal_to_noise", "pruning_random"):  # nothing pruned: the decoded file
        assert run[order][0]["test_accuracy"] == run["decoded_test_accuracy"]
    # As a kill during coding leaves it: trained, checkpoint at the end of training, no file.
    original = (run_dir / "model.mrc").read_bytes()
    trainer = _trainer(TINY, spec, tmp_path / "scratch", str(mnist_root))
    trainer.run(progress=False)
    shutil.copy(tmp_path / "scratch" / "checkpoint.pt", run_dir / "checkpoint.pt")
    (run_dir / "run.json").unlink()
    (run_dir / "model.mrc").unlink()
    stamp = (run_dir / "trained.json").stat().st_mtime_ns
    again = execute_run(TINY, spec, tmp_path, str(mnist_root))
    assert (run_dir / "trained.json").stat().st_mtime_ns == stamp  # training was not repeated
    assert (run_dir / "model.mrc").read_bytes() == original
    assert again["decoded_test_accuracy"] == run["decoded_test_accuracy"]


def test_a_finished_run_made_with_other_settings_is_refused_before_any_work(tmp_path, mnist_root):
    open_study(tmp_path, TINY, "tiny")
    spec = RunSpec("mean-kl", TINY.budget, 0)
    run = execute_run(TINY, spec, tmp_path, str(mnist_root))
    assert run["settings"]["mean_share"] == CompressConfig().mean_share
    assert execute_run(TINY, spec, tmp_path, str(mnist_root)) == run  # unchanged: reused as it is
    done = tmp_path / "runs" / spec.name / "run.json"
    # Made before two options existed, whose defaults are what every run did then: still the product's.
    older = {k: v for k, v in run["settings"].items() if k not in ("random_shift_px", "retrain_lr_schedule")}
    done.write_text(json.dumps({**run, "settings": older}))
    assert execute_run(TINY, spec, tmp_path, str(mnist_root))["settings"] == older
    # Made before the share existed: its means could take 0.95, no longer what ships.
    done.write_text(json.dumps({**run, "settings": {k: v for k, v in run["settings"].items() if k != "mean_share"}}))
    with pytest.raises(InvalidInput, match="other settings \\(mean_share\\)"):
        execute_run(TINY, spec, tmp_path, str(mnist_root))
    done.write_text(json.dumps({**run, "settings": {**run["settings"], "mean_share": 0.95}}))
    with pytest.raises(InvalidInput, match="other settings \\(mean_share\\).*delete that folder"):
        execute_run(TINY, spec, tmp_path, str(mnist_root))
    with pytest.raises(InvalidInput, match="other settings"):
        run_study(TINY, tmp_path, "tiny", str(mnist_root), log=lambda line: None)
    assert not (tmp_path / "wall_time.json").exists()  # a refused invocation did no work to log
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [spec.name]  # no other run was started
    # A stale Mean-Var run of the phase after the trials is refused before the trials, too.
    done.write_text(json.dumps(run))
    [trial] = _trials(TINY)
    final = tmp_path / "runs" / replace(trial, tuning=False).name / "run.json"
    final.parent.mkdir()
    stale = {**_settings(TINY, replace(trial, tuning=False)), "mean_share": 0.95}
    final.write_text(json.dumps({"settings": stale}))
    with pytest.raises(InvalidInput, match=f"{final.parent.name} was made with other settings \\(mean_share\\)"):
        run_study(TINY, tmp_path, "tiny", str(mnist_root), log=lambda line: None)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == sorted([spec.name, final.parent.name])


def test_a_tuning_run_is_trained_and_judged_without_the_test_set(tmp_path, mnist_root, monkeypatch):
    from miracle import data
    from miracle.study import runner

    config = replace(TINY, validation_examples=1000)
    load = data.load

    def train_only(dataset, split, root=None):
        assert split == "train", "a tuning run loaded the test set"
        return load(dataset, split, root)

    runner._split.cache_clear()
    monkeypatch.setattr(data, "load", train_only)
    spec = RunSpec("mean-var", TINY.budget, 0, 1e-2, tuning=True)
    try:
        run = execute_run(config, spec, tmp_path, str(mnist_root))
    finally:
        runner._split.cache_clear()
    assert spec.name.endswith("_validation") and run["final"]["test_accuracy_sample"] > 0
    trainer = _trainer(config, spec, tmp_path / "scratch", str(mnist_root))
    assert trainer.num_examples == 60000 - 1000


def test_two_jobs_run_the_same_study_as_one(tmp_path, mnist_root):
    # With two workers the chosen setting's runs are queued as soon as the trials end, beside
    # the Mean-KL runs: the same runs and choice, listed in the order one process runs them.
    config = replace(TINY, mean_var_lrs=(1e-3, 1e-2))
    lines = []
    two = run_study(config, tmp_path / "two", "tiny", str(mnist_root), jobs=2, log=lines.append)
    one = run_study(config, tmp_path / "one", "tiny", str(mnist_root), log=lambda line: None)
    assert list(two["runs"]) == list(one["runs"]) and two["mean_var_chosen"] == one["mean_var_chosen"]
    chosen_at = next(i for i, line in enumerate(lines) if line.startswith("Mean-Var setting chosen"))
    assert sum(line.startswith("  done: mean-var") and "_validation" in line for line in lines[:chosen_at]) == 2


def test_a_diverged_trial_is_reported_and_never_chosen(tmp_path, mnist_root):
    config = replace(TINY, mean_var_lrs=(1e-3, 1e6))
    summary = run_study(config, tmp_path, "tiny", str(mnist_root), log=lambda line: None)
    by_lr = {t["lr"]: t for t in summary["annealing_trials"]}
    assert "training diverged at step" in by_lr[1e6]["diverged"] and by_lr[1e6]["decoded_test_accuracy"] is None
    assert summary["mean_var_chosen"]["lr"] == 1e-3
    again = run_study(config, tmp_path, "tiny", str(mnist_root), log=lambda line: None)  # resumes, not refused
    assert again["annealing_trials"] == summary["annealing_trials"]
    report = write_report(tmp_path / "json", tmp_path).read_text()
    assert "| 1e+06 | 0.01 | training diverged at step" in report


def test_an_interrupted_training_resumes_with_its_curve(tmp_path, mnist_root):
    spec = RunSpec("mean-kl", TINY.budget, 0)
    whole = execute_run(TINY, spec, tmp_path / "whole", str(mnist_root))
    # As a run killed during training leaves it: the checkpoint of step 4, the curve up to it.
    part_dir = tmp_path / "part"
    shutil.copytree(tmp_path / "whole", part_dir)
    run_dir = part_dir / "runs" / spec.name
    for name in ("trained.json", "run.json", "model.mrc"):
        (run_dir / name).unlink()
    trainer = _trainer(TINY, spec, tmp_path / "scratch", str(mnist_root))
    trainer.start()
    trainer.train_until(4, progress=False)
    trainer.save_checkpoint()
    shutil.copy(tmp_path / "scratch" / "checkpoint.pt", run_dir / "checkpoint.pt")
    curve = json.loads((run_dir / "curve.json").read_text())
    (run_dir / "curve.json").write_text(json.dumps(curve[:2]))
    resumed = execute_run(TINY, spec, part_dir, str(mnist_root))

    def without_time(curve):  # wall time differs between runs; everything else must not
        return [{k: v for k, v in p.items() if k != "seconds"} for p in curve]

    assert without_time(resumed["curve"]) == without_time(whole["curve"])
    assert resumed["final"] == whole["final"]
    assert (run_dir / "model.mrc").read_bytes() == (tmp_path / "whole" / "runs" / spec.name / "model.mrc").read_bytes()


def test_a_resumed_run_leaves_the_process_at_its_own_thread_count(tmp_path, mnist_root):
    # A checkpoint records the threads it was made with, and resuming takes them: a worker
    # resuming another invocation's run must not keep them for the runs after it.
    spec = RunSpec("mean-kl", TINY.budget, 0)
    mine = torch.get_num_threads()
    other = 2 if mine == 1 else 1
    trainer = _trainer(TINY, spec, tmp_path / "runs" / spec.name, str(mnist_root))
    torch.set_num_threads(other)
    try:
        trainer.start()
        trainer.train_until(4, progress=False)
        trainer.save_checkpoint()
    finally:
        torch.set_num_threads(mine)
    run = execute_run(TINY, spec, tmp_path, str(mnist_root))
    assert torch.get_num_threads() == mine
    assert f", {other} threads," in run["finished_by"]["machine"]  # the run's own, recorded


def test_a_part_in_use_by_another_invocation_is_refused(tmp_path, mnist_root):
    open_study(tmp_path, TINY, "tiny")
    with files.exclusive(tmp_path):
        with pytest.raises(MiracleError, match="another miracle run"):
            run_study(TINY, tmp_path, "tiny", str(mnist_root), log=lambda line: None)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "wall_time.json").exists()


_ORPHAN_SCRIPT = """
import os, signal, time
from miracle.study.runner import worker_pool
with worker_pool(1) as pool:
    print(pool.submit(os.getpid).result(), flush=True)
    pool.submit(time.sleep, 120)
    time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads process states from /proc")
def test_a_study_worker_exits_when_its_parent_is_killed():
    # Not subprocess.run: the worker holds the pipe open, so waiting for its end would wait for
    # the worker too.
    parent = subprocess.Popen([sys.executable, "-c", _ORPHAN_SCRIPT], stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    parent.wait(timeout=60)
    deadline = time.monotonic() + 15
    while _running(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    outlived = _running(worker)
    if outlived:
        os.kill(worker, signal.SIGKILL)  # no stray process after a failure
    assert not outlived, "the worker outlived its killed parent"


_INTERRUPTED_SCRIPT = """
import faulthandler, signal, sys
from pathlib import Path
faulthandler.register(signal.SIGUSR1, all_threads=True)  # where it hangs, should it ever
# Ctrl-C as on a terminal, even when the tests were started in the background by a script,
# which makes a process and its children ignore SIGINT.
signal.signal(signal.SIGINT, signal.default_int_handler)
from miracle.cli import sigterm_as_interrupt
from miracle.study.runner import StudyConfig, run_study
config = StudyConfig(**{**%r, "schedule_changes": (("steps", 10 ** 6),)})
with sigterm_as_interrupt():
    run_study(config, Path(sys.argv[1]), "tiny", sys.argv[2], jobs=2, log=lambda line: None)
"""


def _workers_of(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as children:
        pids = [int(child) for child in children.read().split()]
    return [child for child in pids if b"spawn_main" in open(f"/proc/{child}/cmdline", "rb").read()]


def _parallel_study_in_its_runs(tmp_path, mnist_root) -> tuple[subprocess.Popen, list[int]]:
    """A `--jobs 2` study in another process, once both workers are in runs a million steps long."""
    script = _INTERRUPTED_SCRIPT % {k: v for k, v in asdict(TINY).items() if k != "schedule_changes"}
    # A file, not a pipe: the workers share the parent's stderr, so a pipe's end would wait for them.
    with open(tmp_path / "stderr.txt", "w") as stderr:
        parent = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "study"), str(mnist_root)],
                                  stderr=stderr)
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("study/runs/*/curve.json"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    workers = _workers_of(parent.pid)
    if len(list(tmp_path.glob("study/runs/*/curve.json"))) < 2:
        _kill_left_over(workers + [parent.pid])
        pytest.fail(f"the study's two workers were not both in a run after 120 s:\n{(tmp_path / 'stderr.txt').read_text()}")
    return parent, workers


def _wait_for_the_end_of(parent: subprocess.Popen, workers: list[int], stderr_path) -> None:
    """The parent exits within 30 s and its workers within 15 s more; none is left behind either way."""
    try:
        try:
            parent.wait(timeout=30)
        except subprocess.TimeoutExpired:
            parent.send_signal(signal.SIGUSR1)
            time.sleep(1)
            stacks = stderr_path.read_text()
            pytest.fail(f"the parent did not exit within 30 s; its threads:\n{stacks}")
        deadline = time.monotonic() + 15
        while any(map(_running, workers)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(map(_running, workers))
    finally:
        _kill_left_over(workers + [parent.pid])


def _kill_left_over(pids: list[int]) -> None:
    for pid in pids:
        if _running(pid):
            os.kill(pid, signal.SIGKILL)  # no stray process after a failure


def _to_a_thread_other_than_the_main_one(pid: int, signal_number: int) -> None:
    """What the kernel may do with a signal sent to a process: hand it to any of its threads."""
    thread = next(int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid)
    tgkill = {"x86_64": 234, "aarch64": 131}[platform.machine()]
    assert ctypes.CDLL(None, use_errno=True).syscall(tgkill, pid, thread, signal_number) == 0


@pytest.mark.skipif(not os.path.exists("/proc/self/task") or platform.machine() not in ("x86_64", "aarch64"),
                    reason="reads child processes and threads from /proc; tgkill's number on this machine")
@pytest.mark.parametrize("signal_number, to_another_thread",
                         [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGINT, True)])
def test_an_interrupt_stops_a_parallel_study_at_once_and_logs_its_time(tmp_path, mnist_root, signal_number,
                                                                        to_another_thread):
    # The signal goes to the parent alone (as from `kill -INT` or `kill`): its workers, in the
    # middle of runs a million steps long, must stop too instead of being waited for.
    parent, workers = _parallel_study_in_its_runs(tmp_path, mnist_root)
    if to_another_thread:
        _to_a_thread_other_than_the_main_one(parent.pid, signal_number)
    else:
        parent.send_signal(signal_number)
    _wait_for_the_end_of(parent, workers, tmp_path / "stderr.txt")
    assert len(workers) == 2 and parent.returncode != 0
    assert "KeyboardInterrupt" in (tmp_path / "stderr.txt").read_text()
    [entry] = json.loads((tmp_path / "study" / "wall_time.json").read_text())
    assert entry["runs_finished"] == 0 and entry["seconds"] > 0


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="reads child processes from /proc")
def test_a_worker_killed_from_outside_ends_a_parallel_study_with_a_clear_error(tmp_path, mnist_root):
    # As the out-of-memory killer would: the parent must report it, not wait for the dead worker.
    parent, workers = _parallel_study_in_its_runs(tmp_path, mnist_root)
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)
    _wait_for_the_end_of(parent, workers, tmp_path / "stderr.txt")
    assert parent.returncode != 0
    assert "WorkerDied: a worker process of the study died" in (tmp_path / "stderr.txt").read_text()
    [entry] = json.loads((tmp_path / "study" / "wall_time.json").read_text())
    assert entry["runs_finished"] == 0


def test_rerunning_a_finished_study_resumes_instead_of_starting_over(tmp_path, mnist_root):
    out = tmp_path / "study"
    first = run_study(TINY, out, "tiny", str(mnist_root), log=lambda m: None)
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.json")}
    again = run_study(TINY, out, "tiny", str(mnist_root), log=lambda m: None)
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.json")} == stamps
    assert again["runs"] == first["runs"]
    assert again["seconds_this_invocation"] < first["seconds_this_invocation"]
    assert (write_report(out / "json", out)).exists()
    # The second invocation made no run: the wall-time log, and the part's wall time, are the first's.
    log = json.loads((out / "wall_time.json").read_text())
    assert [(i["runs_finished_before"], i["runs_finished"]) for i in log] == [(0, len(first["runs"]))]
    assert log[0]["seconds"] >= first["seconds_this_invocation"] - 1
    cost = json.loads((out / "json" / "cost.json").read_text())
    assert cost["wall_seconds_from_scratch"] == log[0]["seconds"] and len(cost["invocations"]) == 1


def test_an_interrupted_invocation_logs_the_time_its_unfinished_run_took(tmp_path, mnist_root, monkeypatch):
    def interrupted_run(*args, **kwargs):
        time.sleep(0.5)
        raise KeyboardInterrupt

    monkeypatch.setattr("miracle.study.runner.execute_run", interrupted_run)
    with pytest.raises(KeyboardInterrupt):
        run_study(TINY, tmp_path, "tiny", str(mnist_root), log=lambda line: None)
    [entry] = json.loads((tmp_path / "wall_time.json").read_text())
    assert entry["runs_finished"] == 0 and entry["seconds"] >= 0.5


def test_the_wall_time_log_keeps_itself_current_between_finished_runs(tmp_path):
    log = WallTimeLog(tmp_path, jobs=2, heartbeat_seconds=0.05)
    log.start()
    deadline = time.monotonic() + 10
    while not (tmp_path / "wall_time.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    [written] = json.loads((tmp_path / "wall_time.json").read_text())  # no run finished, no update() called
    assert written["seconds"] > 0 and written["runs_finished"] == 0
    log.stop()
    beats = json.loads((tmp_path / "wall_time.json").read_text())[0]["seconds"]
    time.sleep(0.2)
    assert json.loads((tmp_path / "wall_time.json").read_text())[0]["seconds"] == beats  # stopped


@pytest.mark.slow
def test_quick_preset_end_to_end(tmp_path, mnist_root):
    out = run_cli("study", "--preset", "quick", "--out", str(tmp_path / "q"), "--jobs", "2", "--json",
                  env={"MIRACLE_DATA": str(mnist_root)}, timeout=900)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    part = tmp_path / "q" / "lenet5-relu-mnist"
    assert "## 5. Size against error" in (part / "report.md").read_text()
    index = (tmp_path / "q" / "report.md").read_text()
    assert summary["report"] == str(tmp_path / "q" / "report.md") and "[Full report](lenet5-relu-mnist/report.md)" in index
    compression = json.loads((part / "json" / "compression.json").read_text())
    for variant in compression["variants"].values():
        assert variant["size_bytes"]["max"] <= 1600 and len(variant["seeds"]) == 3
