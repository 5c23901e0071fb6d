"""bench/_results.py: new sections go right after the header of RESULTS.md (newest first); old ones untouched."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import _results  # noqa: E402


def test_new_sections_go_first_and_old_ones_stay_byte_for_byte(tmp_path):
    path = tmp_path / "RESULTS.md"
    _results.insert_section("## first, 10:00 UTC\n\n| a |\n|---|\n| 1 |\n", path)
    assert path.read_text().startswith(_results.HEADER)
    before = path.read_text()
    _results.insert_section("\n## second, 11:00 UTC\n\nnote\n", path)
    text = path.read_text()
    header, sections = _results.split_header(text)
    assert header.rstrip() == _results.HEADER.rstrip()
    assert sections.index("## second") < sections.index("## first")
    assert text.endswith(_results.split_header(before)[1])  # the old section, unchanged, now below
    assert [p.name for p in tmp_path.iterdir()] == ["RESULTS.md"]  # no temporary left behind


def test_a_custom_header_is_kept(tmp_path):
    path = tmp_path / "R.md"
    path.write_text("# Title\n\nintro\n\n<!-- marker -->\n## old\n\nx\n")
    _results.insert_section("## new\n\ny", path)
    assert path.read_text() == "# Title\n\nintro\n\n<!-- marker -->\n\n## new\n\ny\n\n## old\n\nx\n"


def test_a_section_needs_a_heading(tmp_path):
    with pytest.raises(ValueError):
        _results.insert_section("no heading", tmp_path / "R.md")


def test_repository_results_file_is_newest_first():
    import re

    _, sections = _results.split_header((BENCH / "RESULTS.md").read_text())
    stamps = re.findall(r"^## .*?(\d{4}-\d{2}-\d{2} \d{2}:\d{2}) UTC", sections, flags=re.M)
    assert stamps and stamps == sorted(stamps, reverse=True)
