"""tools/bench_train_cost.py on tiny phantoms: a real ``medseg train`` per variant and round, a larger patch
costs more per step, and the tool resumes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import MakeConfigFile


@pytest.mark.slow
def test_variants_are_timed_in_rounds_and_resumed(
    brats_root: Path,
    tmp_path: Path,
    tiny_config_file: MakeConfigFile,
    load_tool: Callable[[str], ModuleType],
    capsys: pytest.CaptureFixture[str],
) -> None:
    bench = load_tool("bench_train_cost")
    config = tiny_config_file(tmp_path / "tiny.yaml", brats_root, tmp_path / "unused", batch_size=1)
    argv = ["--config", str(config), "--steps", "3", "--rounds", "2", "--out", str(tmp_path / "out")]
    variants = ["--variant", "small", "--variant", "large", "transforms.patch_size=[48, 48, 48]"]
    assert bench.main([*argv, *variants]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    rounds, summary = lines[:4], {line["summary"]: line for line in lines[4:]}
    assert [(r["variant"], r["round"]) for r in rounds] == [("small", 0), ("large", 0), ("small", 1), ("large", 1)]
    assert all(r["s_per_step"] > 0 and r["peak_rss_gb"] > 0.1 for r in rounds)
    assert summary["small"]["ratio_to_first"] == 1.0 and summary["large"]["ratio_to_first"] > 1.0  # 3.4x voxels
    assert summary["small"]["steps_in_max_minutes"] is None  # the tiny config sets no time limit
    log = (tmp_path / "out" / "small" / "log.txt").read_text()
    assert bench.main([*argv, *variants]) == 0  # every round done: nothing trained again
    assert (tmp_path / "out" / "small" / "log.txt").read_text() == log
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()][:4] == rounds
    with pytest.raises(SystemExit, match="each --variant starts with a new name"):
        bench.main([*argv, "--variant", "a=1"])
