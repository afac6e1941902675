"""The committed files still give the figures their result files report."""

import json
from pathlib import Path

import pytest

import miracle
from miracle.data import load

RESULTS = Path(__file__).resolve().parents[1] / "results"


def _files_with_their_summary():
    """Every committed .mrc beside a compress summary (the JSON of the same name)."""
    for mrc in sorted(RESULTS.rglob("*.mrc")):
        summary = mrc.with_suffix(".json")
        if summary.exists() and "test_error" in json.loads(summary.read_text()):
            # VGG-BN's files take 20 s each to evaluate: the slow suite scores them, and the
            # default suite pins their decoded weights (test_golden.py).
            marks = [pytest.mark.slow] if mrc.parent.name == "vgg" else []
            yield pytest.param(mrc, summary, id=str(mrc.relative_to(RESULTS)), marks=marks)


@pytest.mark.parametrize("mrc, summary", list(_files_with_their_summary()))
def test_a_committed_file_decodes_to_the_test_error_its_summary_reports(mrc, summary, mnist_root):
    reported = json.loads(summary.read_text())
    assert mrc.stat().st_size == reported["size_bytes"]
    model = miracle.decompress(mrc)
    test = load(reported["dataset"], "test", mnist_root)
    assert round(1 - miracle.accuracy(model, test), 6) == reported["test_error"]
