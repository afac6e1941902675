import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STUDY = ROOT / "results" / "study-full"


def test_the_cost_of_fewer_runs_is_estimated_from_the_committed_study(tmp_path):
    out = tmp_path / "cost_options.json"
    layouts = ROOT / "results" / "benchmarks" / "layouts-compress.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "study_cost.py"), "--study", str(STUDY),
                    "--layouts", str(layouts), "--out", str(out)], check=True, capture_output=True)
    result, committed = json.loads(out.read_text()), json.loads((STUDY / "cost_options.json").read_text())
    estimates = result["estimates"]
    # the README's figures
    assert estimates == committed["estimates"]
    assert result["channels_last"]["estimates"] == committed["channels_last"]["estimates"]
    measured = {part.name: json.loads((part / "json" / "cost.json").read_text())["wall_seconds_from_scratch"] / 3600
                for part in STUDY.iterdir() if (part / "json" / "cost.json").exists()}
    whole = estimates["as specified"]
    assert whole["runs"] == len(list(STUDY.glob("*/runs/*/run.json")))
    assert whole["wall_hours_by_part"] == {part: round(hours, 2) for part, hours in measured.items()}
    without = estimates["without the LeNet-300 part"]["wall_hours_by_part"]
    assert without["lenet300-mnist"] == 0 and without["lenet5-relu-mnist"] == whole["wall_hours_by_part"]["lenet5-relu-mnist"]
    for option, estimate in estimates.items():
        if option != "as specified":
            assert estimate["runs"] < whole["runs"] and estimate["wall_hours"] < whole["wall_hours"], option
    # Two LeNet-5 parts, two posteriors, three other budgets: two seeds fewer at each (LeNet-300 has none).
    one_seed = estimates["one seed at the budgets other than the main one"]["runs"]
    assert one_seed == whole["runs"] - 2 * (2 * 3 * 2)
    # LeNet-5 trains in channels_last now: its parts shrink by the measured ratio, LeNet-300's not.
    channels_last = result["channels_last"]
    ratio = json.loads(layouts.read_text())["default_over_channels_last"]["seconds"]
    assert channels_last["parts"] == ["lenet5-relu-fashion-mnist", "lenet5-relu-mnist"] and ratio > 1
    for option, estimate in estimates.items():
        before, after = estimate["wall_hours_by_part"], channels_last["estimates"][option]["wall_hours_by_part"]
        assert after["lenet300-mnist"] == before["lenet300-mnist"], option
        for part in channels_last["parts"]:
            assert abs(after[part] - before[part] / ratio) <= 0.005, (option, part)
        assert channels_last["estimates"][option]["wall_hours"] == round(sum(after.values()), 2), option
