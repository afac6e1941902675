import json
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STUDY = ROOT / "results" / "study-full"


def test_the_cost_of_fewer_runs_is_estimated_from_the_committed_study(tmp_path):
    committed = json.loads((STUDY / "cost_options.json").read_text())
    # The committed file's own command, writing elsewhere.
    program, *args = shlex.split(committed["command"])
    args[args.index("--out") + 1] = str(tmp_path / "cost_options.json")
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / program), *args], check=True, capture_output=True,
                   cwd=ROOT)
    result = json.loads((tmp_path / "cost_options.json").read_text())
    estimates = result["estimates"]
    # the README's figures
    assert estimates == committed["estimates"]
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
