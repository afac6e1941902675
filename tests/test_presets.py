"""The presets are what the README says they are."""

import re
from pathlib import Path

import pytest

from miracle.config import CONFIG_FIELDS, CompressConfig
from miracle.errors import InvalidInput
from miracle.presets import PRESETS, get_preset

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_presets() -> dict[str, dict[str, str]]:
    table = README.read_text().split("<!-- presets -->", 1)[1].strip().splitlines()
    header = [cell.strip().strip("`").removeprefix("--").replace("-", "_") for cell in table[0].strip("|").split("|")]
    rows = {}
    for line in table[2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip().strip("`") for cell in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header[1:], cells[1:]))
    return rows


def test_the_readme_table_lists_every_preset_with_its_options():
    documented = _readme_presets()
    assert set(documented) == set(PRESETS)
    for name, options in PRESETS.items():
        assert set(documented[name]) == set(options), name
        for key, value in options.items():
            assert documented[name][key].replace(",", "") == (f"{value:g}" if isinstance(value, float) else str(value))


def test_every_preset_option_is_a_configuration_field_and_an_explicit_option_wins():
    for name, options in PRESETS.items():
        assert set(options) <= set(CONFIG_FIELDS)
        config = CompressConfig.from_options(name, budget="1.52KB", steps=9999)
        assert config.steps == 9999
        assert all(getattr(config, key) == value for key, value in options.items() if key != "steps")


def test_an_unknown_preset_names_the_known_ones():
    with pytest.raises(InvalidInput, match=re.escape("unknown preset 'slow'; choose one of demo, fast, augmented")):
        get_preset("slow")
