"""The documentation tells the truth about the code and the result files."""

import importlib.util
import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("results_doc", ROOT / "docs" / "results.py")
results_doc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(results_doc)

DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_readme_tables_are_the_result_files_figures():
    readme = (ROOT / "README.md").read_text()
    assert readme == results_doc.readme_with_tables(readme), "run python docs/results.py"
    table = readme.split("<!-- results-table -->")[1].split("<!-- /results-table -->")[0]
    assert "0.89%" in table and "0.66 ± 0.03%" in table  # the rows hold figures, not just links


def test_docs_results_md_is_generated_from_every_result_file():
    text = (ROOT / "docs" / "results.md").read_text()
    assert text == results_doc.results_md(), "run python docs/results.py"
    for path in results_doc.result_files():
        assert f"`results/{path.relative_to(results_doc.RESULTS).as_posix()}`" in text
    # Exactly the committed result files: a run's ignored work folder would make a fresh clone differ.
    tracked = subprocess.run(["git", "ls-files", "results/*.json"], cwd=ROOT, capture_output=True, text=True).stdout
    assert {p.relative_to(ROOT).as_posix() for p in results_doc.result_files()} == {
        name for name in tracked.split() if not results_doc.skipped(Path(name).parts[1:])}


def test_the_readme_study_summary_is_the_verdicts_json(tmp_path, monkeypatch):
    json_dir = tmp_path / "lenet5-relu-mnist" / "json"
    json_dir.mkdir(parents=True)
    claim = {"claim": "predictive performance is kept after compression", "verdict": "mixed",
             "numbers": "1.52KB: Mean-KL 98.90 ± 0.05%, Mean-Var 98.70 ± 0.10%"}
    (json_dir / "verdicts.json").write_text(json.dumps({"claims": [claim], "rules": "fixture"}))
    monkeypatch.setattr(results_doc, "STUDY", tmp_path)
    assert results_doc.study_table().splitlines()[2] == (
        "| predictive performance is kept after compression | [lenet5-relu-mnist](results/study-full/lenet5-relu-mnist/"
        "report.md) | **mixed** | 1.52KB: Mean-KL 98.90 ± 0.05%, Mean-Var 98.70 ± 0.10% |")
    (json_dir / "verdicts.json").write_text(json.dumps({"claims": [{**claim, "verdict": "supported"}]}))
    assert "**supported**" in results_doc.study_table()


def test_a_changed_figure_makes_the_readme_stale(tmp_path, monkeypatch):
    results = tmp_path / "results"
    source = results_doc.RESULTS / "lenet5-relu-mnist-mean-kl.json"
    (results / source.parent.relative_to(results_doc.RESULTS)).mkdir(parents=True, exist_ok=True)
    (results / "lenet5-relu-mnist-mean-kl.json").write_text(source.read_text().replace('"test_error": 0.0089',
                                                                                        '"test_error": 0.0091'))
    monkeypatch.setattr(results_doc, "RESULTS", results)
    assert "0.91%" in results_doc.headline_table() and "0.89%" not in results_doc.headline_table()


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_local_link_points_at_a_file_of_the_repository(doc):
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", doc.read_text()):
        if not target.startswith(("http://", "https://")):
            assert (doc.parent / target).resolve().is_file(), f"{doc.name} links to missing {target}"


def test_no_file_refers_to_a_file_outside_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    outside = b"../" + b"shared"  # spelled in two parts so that this file does not match itself
    # CI alone may look beside the clone for the datasets its machine keeps there.
    offenders = [name for name in tracked if name != ".ci/run" and outside in (ROOT / name).read_bytes()]
    assert offenders == []


def _readme_commands() -> list[str]:
    """Every `miracle ...` command in the README's shell blocks, continuation lines joined."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("miracle "):
                commands.append(line)
    return commands


def test_the_readme_shows_the_main_commands():
    shown = {command.split()[1] for command in _readme_commands()}
    assert {"compress", "decompress", "evaluate", "inspect", "train", "data", "study"} <= shown


@pytest.mark.parametrize("command", _readme_commands())
def test_every_readme_command_is_accepted_by_the_command_line(command):
    from miracle.cli import build_parser

    args = build_parser().parse_args(shlex.split(command)[1:])  # a wrong option exits with status 2
    assert callable(args.func)
