"""The study of the seed paper: Mean-KL against Mean-Var (runner -> figures JSON -> report)."""

from .report import pyplot, write_index, write_report
from .runner import (PRESETS, StudyConfig, check_config, check_data, get_preset, open_preset, part_name, prepare_study,
                     run_study)

__all__ = ["PRESETS", "StudyConfig", "check_config", "check_data", "get_preset", "open_preset", "part_name",
           "prepare_study", "pyplot", "run_study", "write_index", "write_report"]
