"""The study's report: ``report.md`` and PNG plots, made from the figure JSON files alone."""

from __future__ import annotations

import io
import json
from pathlib import Path

from .. import files
from ..errors import MiracleError
from .figures import FIGURE_FILES, PARAMS, TAIL_QUANTITIES

COLOURS = {"mean-var": "tab:orange", "mean-kl": "tab:blue"}
LABELS = {"mean-var": "Mean-Var", "mean-kl": "Mean-KL"}
TAIL_TITLES = {"decoded_over_s": "decoded weight / s", "mu_over_s": "posterior mean mu / s",
               "sigma_over_s": "posterior std sigma / s", "kl_bits": "KL per weight (bits)"}


def load_figures(json_dir: Path) -> dict:
    missing = [name for name in FIGURE_FILES if not (json_dir / f"{name}.json").exists()]
    if missing:
        raise FileNotFoundError(f"{json_dir} lacks {', '.join(m + '.json' for m in missing)}; run the study first")
    return {name: json.loads((json_dir / f"{name}.json").read_text()) for name in FIGURE_FILES}


def pyplot():
    """matplotlib's pyplot, drawing into files only."""
    try:
        import matplotlib
    except ImportError:
        raise MiracleError("the study's plots need matplotlib, which is not installed: "
                           "pip install 'miracle[study]'") from None

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, axes, out: Path, legend_fontsize=None, legend_outside=False) -> None:
    """The finish every plot shares: light grid, legend, tight layout, one PNG."""
    place = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0)} if legend_outside else {}
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=legend_fontsize, **place)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    pyplot().close(fig)
    files.write_bytes(out, png.getvalue())  # an interrupted save leaves no truncated plot


def _plain_log(axis) -> None:
    """Log scale with plain numbers (1000, not 10^3) and no labels on minor ticks."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    axis.set_major_formatter(ScalarFormatter())
    axis.set_minor_formatter(NullFormatter())


def _ticks_within(candidates, values, margin: float) -> list:
    """The candidate ticks of a log axis that lie within ``margin`` times the data's range,
    widened until there are at least two (one would not tell the scale)."""
    while True:
        ticks = [t for t in candidates if min(values) / margin <= t <= max(values) * margin]
        if len(ticks) >= 2 or len(ticks) == len(candidates):
            return ticks
        margin *= 1.5


def _band(ax, xs_per_seed, ys_per_seed, colour, label):
    """Mean over seeds with a min-max band (seeds share their x positions)."""
    n = min(len(ys) for ys in ys_per_seed)
    xs = [sum(x[i] for x in xs_per_seed) / len(xs_per_seed) for i in range(n)]
    mean = [sum(y[i] for y in ys_per_seed) / len(ys_per_seed) for i in range(n)]
    ax.plot(xs, mean, color=colour, label=label)
    if len(ys_per_seed) > 1:
        ax.fill_between(xs, [min(y[i] for y in ys_per_seed) for i in range(n)],
                        [max(y[i] for y in ys_per_seed) for i in range(n)], color=colour, alpha=0.2)


def plot_convergence(fig_json: dict, out: Path, x_key: str) -> None:
    fig, (ax_acc, ax_obj) = pyplot().subplots(1, 2, figsize=(11, 4))
    for param in PARAMS:
        seeds = fig_json["variants"][param]["seeds"]
        label = f"{LABELS[param]} ({len(seeds)} seeds)"
        _band(ax_acc, [[p[x_key] for p in s["curve"]] for s in seeds],
              [[100 * p["test_accuracy_sample"] for p in s["curve"]] for s in seeds], COLOURS[param], label)
        _band(ax_obj, [[p[x_key] for p in s["objective"]] for s in seeds],
              [[p["negative_elbo"] for p in s["objective"]] for s in seeds], COLOURS[param], label)
    ax_acc.axhline(100 * fig_json["target_accuracy"], color="grey", linestyle="--", label="target")
    x_label = "training steps" if x_key == "step" else "training time (s)"
    ax_acc.set(xlabel=x_label, ylabel="test accuracy, posterior sample (%)", title="Accuracy")
    lows = [100 * p["test_accuracy_sample"] for param in PARAMS for s in fig_json["variants"][param]["seeds"]
            for p in s["curve"][len(s["curve"]) // 4:]]
    ax_acc.set_ylim(max(min(lows) - 2, 0), 100)
    ax_obj.set(xlabel=x_label, ylabel="negative ELBO per example (nats)", title="Objective (window means)")
    _save(fig, (ax_acc, ax_obj), out)


def plot_annealing(fig_json: dict, out: Path) -> None:
    fig, (ax_acc, ax_kl) = pyplot().subplots(1, 2, figsize=(11, 4))
    for trial in fig_json["trials"]:
        chosen = (trial["lr"], trial["eps_beta"]) == (fig_json["chosen"]["lr"], fig_json["chosen"]["eps_beta"])
        label = f"lr {trial['lr']:g}, eps_beta {trial['eps_beta']:g}" + (" (chosen)" if chosen else "")
        steps = [p["step"] for p in trial["curve"]]
        ax_acc.plot(steps, [100 * p["test_accuracy_sample"] for p in trial["curve"]], label=label)
        ax_kl.plot(steps, [p["kl_bits_per_block_max"] for p in trial["curve"]], label=label)
    ax_kl.axhline(16, color="grey", linestyle="--", label="budget per block (16 bits)")
    ax_acc.set(xlabel="training steps", ylabel="validation accuracy, posterior sample (%)",
               title="Mean-Var trials (seed 0)")
    ax_kl.set(xlabel="training steps", ylabel="largest block KL (bits)", title="Budget: largest block KL")
    ax_kl.set_yscale("log")
    _plain_log(ax_kl.yaxis)
    kl_bits = [16] + [p["kl_bits_per_block_max"] for trial in fig_json["trials"] for p in trial["curve"]]
    ax_kl.set_yticks(_ticks_within((10, 16, 20, 30, 50, 100, 200, 300, 500, 1000), kl_bits, 1.1))
    _save(fig, (ax_acc, ax_kl), out)


def plot_tails(fig_json: dict, out: Path) -> None:
    fig, axes = pyplot().subplots(1, len(TAIL_QUANTITIES), figsize=(16, 3.8))
    for ax, quantity in zip(axes, TAIL_QUANTITIES):
        for param in PARAMS:
            entry = fig_json["variants"][param][quantity]
            hist = entry["histogram"]
            total = sum(hist["counts"]) + hist["outside"]
            widths = [b - a for a, b in zip(hist["edges"], hist["edges"][1:])]
            density = [c / (total * w) for c, w in zip(hist["counts"], widths)]
            kurt = entry["excess_kurtosis"]["mean"]
            ax.stairs(density, hist["edges"], color=COLOURS[param],
                      label=f"{LABELS[param]} (kurtosis {kurt:.1f})")
        ax.set(title=TAIL_TITLES[quantity], xlabel=TAIL_TITLES[quantity], ylabel="density (log scale)")
        ax.set_yscale("log")
    _save(fig, axes, out, legend_fontsize=8)


PRUNING_STYLES = {"magnitude": ("-", "smallest |w| first"), "signal_to_noise": ("--", "lowest |mu|/sigma first"),
                  "random": (":", "random order")}


def _pruning_orders(fig_json: dict, param: str) -> dict:
    """Each pruning order's curve for ``param``: magnitude always, the others when measured."""
    return {"magnitude": fig_json["variants"][param],
            **{order: curve for order, curve in fig_json.get("orders", {}).get(param, {}).items()}}


def plot_pruning(fig_json: dict, out: Path) -> None:
    fig, ax = pyplot().subplots(figsize=(7, 4.5))
    xs = [100 * f for f in fig_json["fractions"]]
    for param in PARAMS:
        for order, curve in _pruning_orders(fig_json, param).items():
            style, what = PRUNING_STYLES[order]
            by_fraction = curve["by_fraction"]
            ax.plot(xs, [100 * b["mean"] for b in by_fraction], linestyle=style, marker="o", markersize=3,
                    color=COLOURS[param], label=f"{LABELS[param]}, {what} ({by_fraction[0]['n']} seeds)")
            ax.fill_between(xs, [100 * b["min"] for b in by_fraction], [100 * b["max"] for b in by_fraction],
                            color=COLOURS[param], alpha=0.12)
    ax.set(xlabel="weights pruned (%, global, no retraining)", ylabel="test accuracy (%)",
           title="Pruning the decoded weights")
    _save(fig, [ax], out, legend_fontsize=7)


# A baseline's points beyond this many times our worst error would only stretch the error axis
# and the table: they are in size_vs_error.json.
BASELINE_ERROR_FACTOR = 2


def _shown_baselines(fig_json: dict) -> dict[str, list[dict]]:
    worst = BASELINE_ERROR_FACTOR * max(p["test_error"]["mean"] for p in fig_json["ours"])
    return {method: [p for p in points if p["test_error"] <= worst]
            for method, points in fig_json.get("baselines", {}).items()}


def _bytes_label(size_bytes: float, _position=None) -> str:
    return f"{size_bytes / 1e6:g}M" if size_bytes >= 1e6 else f"{size_bytes / 1e3:g}k"


def plot_size_vs_error(fig_json: dict, out: Path) -> None:
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fig, ax = pyplot().subplots(figsize=(10, 4.8))
    for param in PARAMS:
        points = [p for p in fig_json["ours"] if p["param"] == param]
        ax.errorbar([p["size_bytes"] for p in points], [100 * p["test_error"]["mean"] for p in points],
                    yerr=[100 * p["test_error"]["std"] for p in points], marker="o", capsize=3, color=COLOURS[param],
                    label=f"{LABELS[param]} (our files, mean ± std over {points[0]['test_error']['n']} seeds)")
    for p, marker in zip(fig_json["published"], "xs^vD"):
        ax.scatter(p["size_bytes"], 100 * p["test_error"], marker=marker, color="black",
                   label=f"{p['method']} (published)")
    baselines = _shown_baselines(fig_json)
    for (method, points), colour in zip(baselines.items(), ("tab:green", "tab:purple", "tab:brown", "tab:gray")):
        ax.plot([p["size_bytes"] for p in points], [100 * p["test_error"] for p in points], marker=".",
                linestyle="--", color=colour, label=f"{method} (plain network, post-training)")
    if fig_json.get("baselines_plain_test_error") is not None:
        ax.axhline(100 * fig_json["baselines_plain_test_error"], color="gray", linewidth=0.8, linestyle=":",
                   label="plain network, uncompressed")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(_bytes_label))
    ax.xaxis.set_minor_formatter(NullFormatter())
    _plain_log(ax.yaxis)
    sizes = [p["size_bytes"] for p in fig_json["ours"] + fig_json["published"]]
    sizes += [p["size_bytes"] for points in baselines.values() for p in points]
    # 1.5k and 2k would overlap their neighbours on an axis that reaches the baselines' sizes.
    kilobyte_ticks = (1000, 1500, 2000, 3000) if max(sizes) < 30 * min(sizes) else (1000, 3000)
    x_ticks = _ticks_within((*kilobyte_ticks, 10_000, 30_000, 100_000, 300_000, 1_000_000, 3_000_000), sizes, 1.5)
    ax.set_xticks(x_ticks)
    ax.set_xlim(min(sizes + x_ticks) / 1.3, max(sizes + x_ticks) * 1.3)  # one budget alone would leave a decade blank
    errors = [100 * p["test_error"]["mean"] for p in fig_json["ours"]] + [100 * p["test_error"] for p in
                                                                          fig_json["published"]]
    errors += [100 * p["test_error"] for points in baselines.values() for p in points]
    ax.set_yticks(_ticks_within((0.5, 0.6, 0.7, 0.8, 1, 1.5, 2, 3, 4, 5, 7, 10, 20, 50), errors, 1.2))
    ax.set(xlabel="size (bytes, log scale; k = 1,000, M = 1,000,000)", ylabel="test error (%, log scale)",
           title="Size against error")
    _save(fig, [ax], out, legend_fontsize=8, legend_outside=True)


def _pct(stat: dict | None) -> str:
    if stat is None:
        return "n/a"
    return f"{100 * stat['mean']:.2f} ± {100 * stat['std']:.2f}"


def _num(stat: dict | None, digits: int = 0) -> str:
    if stat is None:
        return "not reached"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def write_markdown(figs: dict, out: Path) -> None:
    conv, ann, comp = figs["convergence"], figs["annealing"], figs["compression"]
    tails, prune, size = figs["tails"], figs["pruning"], figs["size_vs_error"]
    config, schedule = conv["config"], conv["schedule_options"]
    lines = [
        f"# Mean-KL against Mean-Var: study `{conv['preset']}`",
        "",
        f"{config['model']} on {config['dataset']}, files of at most {', '.join([config['budget'], *config['other_budgets']])} "
        f"(the main comparison at {config['budget']}), {config['seeds']} seeds each. Every run uses the product's "
        f"`{config['schedule']}` schedule: " + ", ".join(f"`{k}` {v}" for k, v in schedule.items()) + ".",
        f"Command: `{conv.get('command', '?')}`, commit `{conv.get('git_commit', '?')}`, {conv.get('date', '?')}, "
        f"{conv.get('machine', '?')}. Values are mean ± standard deviation over seeds.",
        "",
        "## The four claims",
        "",
        "| claim | verdict | numbers |",
        "|---|---|---|",
        *[f"| {c['claim']} | **{c['verdict']}** | {c['numbers']} |" for c in figs["verdicts"]["claims"]],
        "",
        "The rules, fixed before the runs:",
        "",
        *[f"> {line}" if line.strip() else ">" for line in figs["verdicts"]["rules"].strip().splitlines()],
        "",
        "## 1. Convergence",
        "",
        "![accuracy and objective against steps](convergence_steps.png)",
        "![accuracy and objective against seconds](convergence_seconds.png)",
        "",
        f"Target: {100 * conv['target_accuracy']:.2f}% posterior-sample test accuracy "
        f"({conv['target_fraction']:g} of the better final mean). {conv['note']}.",
        "",
        "| variant | final sample accuracy (%) | seeds reaching target | steps to target | seconds to target | ms/step |",
        "|---|---|---|---|---|---|",
    ]
    for param in PARAMS:
        v = conv["variants"][param]
        step_ms = sum(s["step_ms"] for s in v["seeds"]) / len(v["seeds"])
        lines.append(f"| {LABELS[param]} | {100 * v['final_sample_accuracy']:.2f} | {v['seeds_reaching_target']}/"
                     f"{len(v['seeds'])} | {_num(v['steps_to_target'])} | {_num(v['seconds_to_target'], 1)} | "
                     f"{step_ms:.1f} |")
    ratio = conv["ratio_steps_mean_var_over_mean_kl"]
    lines += ["", f"Steps-to-target ratio Mean-Var / Mean-KL: {ratio:.2f}" if ratio is not None else
              "Steps-to-target ratio: not defined (a variant never reached the target).", ""]
    if conv["ratio_seconds_mean_var_over_mean_kl"] is not None:
        lines += [f"Seconds-to-target ratio Mean-Var / Mean-KL: {conv['ratio_seconds_mean_var_over_mean_kl']:.2f}", ""]
    lines += [
        "### Mean-Var settings tried (seed 0)",
        "",
        "![annealing trials](annealing.png)",
        "",
        f"Rule: {ann['rule']} ({ann['lr']['mean-kl']:g}). Chosen: learning rate {ann['chosen']['lr']:g}, "
        f"eps_beta {ann['chosen']['eps_beta']:g}. Both use Adam with the same cosine schedule.",
        "",
        "Accuracies on the validation split:",
        "",
        "| learning rate | eps_beta | sample accuracy (%) | mean accuracy (%) | largest block KL (bits) | decoded file (%) | training seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in ann["trials"]:
        if "diverged" in t:
            lines.append(f"| {t['lr']:g} | {t['eps_beta']:g} | {t['diverged']} | | | | {t['train_seconds']:.0f} |")
            continue
        lines.append(f"| {t['lr']:g} | {t['eps_beta']:g} | {100 * t['final']['test_accuracy_sample']:.2f} | "
                     f"{100 * t['final']['test_accuracy_mean']:.2f} | {t['kl_bits_per_block_max']:.2f} | "
                     f"{100 * t['decoded_test_accuracy']:.2f} | {t['train_seconds']:.0f} |")
    lines += [
        "",
        "## 2. Accuracy after compression",
        "",
        "Test accuracy at equal file size:",
        "",
        "| budget | variant | file size (bytes) | posterior mean (%) | posterior sample (%) | decoded file (%) |",
        "|---|---|---|---|---|---|",
    ]
    for budget, variants in comp["by_budget"].items():
        for param in PARAMS:
            v = variants[param]
            lines.append(f"| {budget} | {LABELS[param]} | {v['size_bytes']['max']:.0f} | {_pct(v['test_accuracy_mean'])} | "
                         f"{_pct(v['test_accuracy_sample'])} | {_pct(v['test_accuracy_decoded'])} |")
    ablation = figs["ablation"]
    lines += ["", f"### Mean-KL's forms ({ablation['budget']}, seed 0)", "", ablation["note"] + ".", "",
              "| form | file size (bytes) | posterior mean (%) | posterior sample (%) | decoded file (%) |",
              "|---|---|---|---|---|"]
    for f in ablation["forms"]:
        lines.append(f"| {f['form']} | {f['size_bytes']} | {100 * f['test_accuracy_mean']:.2f} | "
                     f"{100 * f['test_accuracy_sample']:.2f} | {100 * f['test_accuracy_decoded']:.2f} |")
    lines += ["", "## 3. Tails", "", "![histograms](tails.png)", "", tails["note"] + ".", "",
              "| quantity | Mean-Var excess kurtosis | Mean-KL excess kurtosis | Mean-Var tail index | Mean-KL tail index |",
              "|---|---|---|---|---|"]
    for quantity in TAIL_QUANTITIES:
        mv, mk = tails["variants"]["mean-var"][quantity], tails["variants"]["mean-kl"][quantity]
        lines.append(f"| {TAIL_TITLES[quantity]} | {_num(mv['excess_kurtosis'], 2)} | {_num(mk['excess_kurtosis'], 2)} "
                     f"| {_num(mv['hill_tail_index'], 2)} | {_num(mk['hill_tail_index'], 2)} |")
    columns = [(p, order, curve) for p in PARAMS for order, curve in _pruning_orders(prune, p).items()]
    lines += ["", "## 4. Pruning", "", "![pruning](pruning.png)", "", prune["note"] + ".", "",
              "| pruned (%) | " + " | ".join(f"{LABELS[p]}, {PRUNING_STYLES[o][1]} (%)" for p, o, _ in columns) + " |",
              "|---|" + "---|" * len(columns)]
    for i, fraction in enumerate(prune["fractions"]):
        lines.append(f"| {100 * fraction:g} | " + " | ".join(_pct(c["by_fraction"][i]) for _, _, c in columns) + " |")
    lines += ["", "## 5. Size against error", "", "![size against error](size_vs_error.png)", "",
              size["note"] + ".", "", "| variant | budget | file size (bytes) | test error (%) | seeds |",
              "|---|---|---|---|---|"]
    for p in size["ours"]:
        lines.append(f"| {LABELS[p['param']]} | {p['budget']} | {p['size_bytes']} | {_pct(p['test_error'])} | "
                     f"{', '.join(map(str, p['seeds']))} |")
    for p in size["published"]:
        lines.append(f"| {p['method']} (published) | | {p['size_bytes']} | {100 * p['test_error']:.2f} | |")
    for method, points in _shown_baselines(size).items():
        lines += [f"| {method} (post-training, settings chosen on validation) | | {p['size_bytes']} | "
                  f"{100 * p['test_error']:.2f} | |" for p in points]
    if size.get("baselines"):
        lines += ["", f"Baselines: the points of each method's validation front with test error at most "
                  f"{BASELINE_ERROR_FACTOR} times our worst; every point is in `json/size_vs_error.json`."]
    if size.get("baselines_plain_test_error") is not None:
        lines += ["", f"The plainly trained network the baselines start from: {100 * size['baselines_plain_test_error']:.2f}% "
                  "test error uncompressed (`benchmarks/baselines.py`, recorded in `baselines.json`)."]
    cost = figs["cost"]
    lines += ["", "## 6. Cost", "", f"{cost['runs']} runs, {cost['process_seconds'] / 3600:.1f} hours of training and "
              f"coding summed over the runs. {_wall_time_sentence(cost)}", "",
              "| runs of | hours of training and coding |", "|---|---|",
              *[f"| {kind} | {seconds / 3600:.2f} |" for kind, seconds in cost["process_seconds_by_kind"].items()]]
    files.write_text(out / "report.md", "\n".join(lines) + "\n")


def _wall_time_sentence(cost: dict) -> str:
    if cost.get("wall_seconds_from_scratch") is None:
        return ("Its wall time from scratch was not measured: its runs were made before the study logged wall "
                "time, or resumed from runs made elsewhere.")
    jobs = sorted({i["jobs"] for i in cost["invocations"]})
    return (f"Wall time from scratch: {cost['wall_seconds_from_scratch'] / 3600:.2f} hours, measured, in "
            f"{len(cost['invocations'])} invocation(s) with --jobs {', '.join(map(str, jobs))}.")


def write_report(json_dir: Path, out: Path) -> Path:
    """report.md and the PNGs in ``out``, from the JSON files in ``json_dir`` alone."""
    figs = load_figures(json_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_convergence(figs["convergence"], out / "convergence_steps.png", "step")
    plot_convergence(figs["convergence"], out / "convergence_seconds.png", "seconds")
    plot_annealing(figs["annealing"], out / "annealing.png")
    plot_tails(figs["tails"], out / "tails.png")
    plot_pruning(figs["pruning"], out / "pruning.png")
    plot_size_vs_error(figs["size_vs_error"], out / "size_vs_error.png")
    write_markdown(figs, out)
    return out / "report.md"


def write_index(out: Path, preset: str, part_dirs: list[Path]) -> Path:
    """``out/report.md``: every part's verdicts, each linked to the part's full report."""
    lines = [f"# Mean-KL against Mean-Var: study `{preset}`", "",
             "Each part is one model on one dataset, with its own report, plots and JSON.", ""]
    hours, wall_hours = 0.0, []
    for part in part_dirs:
        figs = load_figures(part / "json")
        config, cost = figs["verdicts"]["config"], figs["cost"]
        hours += cost["process_seconds"] / 3600
        wall = cost.get("wall_seconds_from_scratch")
        if wall is not None:
            wall_hours.append(wall / 3600)
        lines += [f"## {config['model']} on {config['dataset']}", "",
                  f"[Full report]({part.name}/report.md): files of at most "
                  f"{', '.join([config['budget'], *config['other_budgets']])}, {config['seeds']} seeds, "
                  f"{cost['runs']} runs, {cost['process_seconds'] / 3600:.1f} hours of training and coding"
                  + (f", {wall / 3600:.2f} hours of wall time from scratch." if wall is not None else "."), "",
                  "| claim | verdict | numbers |", "|---|---|---|",
                  *[f"| {c['claim']} | **{c['verdict']}** | {c['numbers']} |" for c in figs["verdicts"]["claims"]], ""]
    if len(wall_hours) == len(part_dirs):
        wall_sentence = f"{sum(wall_hours):.2f} hours of wall time from scratch, measured"
    else:
        wall_sentence = f"wall time from scratch measured for {len(wall_hours)} of {len(part_dirs)} parts"
    lines += [f"Cost of the parts above: {hours:.1f} hours of training and coding summed over the runs; "
              f"{wall_sentence}.", ""]
    files.write_text(out / "report.md", "\n".join(lines))
    return out / "report.md"
