"""The study of the seed paper: Mean-KL against Mean-Var (runner -> figures JSON -> report)."""

from .report import write_report
from .runner import PRESETS, StudyConfig, get_preset, run_study

__all__ = ["PRESETS", "StudyConfig", "get_preset", "run_study", "write_report"]
