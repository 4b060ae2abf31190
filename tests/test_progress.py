"""Progress displays: a tqdm bar on a terminal, plain lines (never carriage-return frames) in a log."""

from __future__ import annotations

import ast
import io
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from medseg.progress import track

if TYPE_CHECKING:
    from conftest import MakeConfigFile

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m medseg ARGS`` with stdout and stderr captured (pipes, not terminals)."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "medseg", *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "\r" not in proc.stdout and "\r" not in proc.stderr, proc.stderr[-3000:]
    return proc


def test_a_log_gets_a_plain_line_every_n_items_and_at_the_end(capsys: pytest.CaptureFixture[str]) -> None:
    assert list(track(range(25), desc="scoring", every=10)) == list(range(25))
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "scoring: 10/25 case(s)",
        "scoring: 20/25 case(s)",
        "scoring: 25/25 case(s)",
    ]
    assert "left" in lines[0] and "left" not in lines[-1]


def test_about_ten_lines_by_default_counting_resumed_items(capsys: pytest.CaptureFixture[str]) -> None:
    with track(total=95, desc="x") as bar:
        for _ in range(95):
            bar.update()
    assert len(capsys.readouterr().err.splitlines()) == 10
    with track(total=10, initial=4, desc="predict", every=3) as bar:
        bar.set_postfix_str("case_7")
        for _ in range(6):
            bar.update(1)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in lines] == ["predict: 7/10 case(s)", "predict: 10/10 case(s)"]
    assert "case_7" not in lines[0]  # a bar's postfix: the case in progress


def test_every_zero_or_disabled_writes_nothing_in_a_log(capsys: pytest.CaptureFixture[str]) -> None:
    for _ in track(range(5), desc="epoch 1/2", every=0):
        pass
    bar = track(range(5), desc="epoch 1/2", enabled=False)
    bar.set_postfix(loss="0.5")
    assert list(bar) == list(range(5))
    assert capsys.readouterr() == ("", "")


def test_a_terminal_gets_a_tqdm_bar(terminal_stderr: Callable[[], io.StringIO]) -> None:
    terminal = terminal_stderr()
    for _ in track(range(3), desc="scoring"):
        pass
    assert "\r" in terminal.getvalue() and "scoring: 100%" in terminal.getvalue()
    terminal.seek(0)
    terminal.truncate()
    for _ in track(range(3), desc="epoch 1/2", enabled=False):
        pass
    assert terminal.getvalue() == ""


def test_tqdm_is_used_in_one_place() -> None:
    users = []
    for path in sorted((REPO / "medseg").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [node.module] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if any(n and n.split(".")[0] == "tqdm" for n in names):
                users.append(path.relative_to(REPO).as_posix())
    assert users == ["medseg/progress.py"]


def test_phantoms_command_in_a_log(tmp_path: Path) -> None:
    out = tmp_path / "phantoms"
    proc = _run("phantoms", "brats", "--out", str(out), "--cases", "2", "--shape", "32", "32", "24", "--spacing", "6",
                "--workers", "1")  # fmt: skip
    assert "BraTS 2021 phantoms: 2/2 case(s)" in proc.stderr


@pytest.mark.slow
def test_train_predict_and_evaluate_commands_in_a_log(
    brats_root: Path, tmp_path: Path, tiny_config_file: MakeConfigFile
) -> None:
    config = tiny_config_file(
        tmp_path / "tiny.yaml", brats_root, tmp_path / "run", iterations_per_epoch=2, batch_size=1, val_every=2
    )
    trained = _run("train", "--config", str(config), "--device", "cpu")
    assert "epoch 1/2 | loss" in trained.stdout and "epoch 2/2 | loss" in trained.stdout
    model, pred = tmp_path / "run" / "last.pt", tmp_path / "pred"
    predicted = _run("predict", "--model", str(model), "--input", str(brats_root), "--output", str(pred),
                     "--device", "cpu")  # fmt: skip
    cases = len([p for p in brats_root.iterdir() if p.is_dir()])
    assert f"predict: {cases}/{cases} case(s)" in predicted.stderr
    scored = _run("evaluate", "--pred", str(pred), "--ref", str(brats_root), "--out", str(tmp_path / "eval"))
    assert f"scoring: {cases}/{cases} case(s)" in scored.stderr
