"""read_json: one error line naming the file for each way a JSON file can be unusable."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from medseg.errors import MedsegInputError
from medseg.io.jsonfile import read_json


def test_reads_json(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text('{"training": [1, 2]}')
    assert read_json(tmp_path / "a.json", what="dataset.json") == {"training": [1, 2]}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "dataset.json not found"),
        (lambda p: p.mkdir(), "cannot read dataset.json: Is a directory"),
        (lambda p: p.write_text("{not json"), "dataset.json is not valid JSON"),
        (lambda p: p.write_bytes(b"\xff\xfe{"), "dataset.json is not valid JSON"),
    ],
)
def test_unusable_files_are_one_line_naming_the_file(
    tmp_path: Path, make: Callable[[Path], object], message: str
) -> None:
    path = tmp_path / "dataset.json"
    make(path)
    with pytest.raises(MedsegInputError, match=message) as info:
        read_json(path, what="dataset.json")
    assert str(path) in str(info.value) and "\n" not in str(info.value)
