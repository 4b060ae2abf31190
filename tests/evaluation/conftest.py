"""The ``panoptica`` fixture: BraTS 2025's ``brats-evaluation`` (on Panoptica) run in its own Python environment.

Panoptica 2.1.7 pins numpy < 2.3, so it cannot join medseg's environment. Where ``MEDSEG_PANOPTICA_PYTHON`` names
the python of an environment that has it (``python3 -m venv X && X/bin/pip install brats-evaluation``), the
fixture scores scenes there through ``panoptica_runner.py`` in a subprocess; elsewhere the tests that use it skip.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

Scene = tuple[np.ndarray, np.ndarray, Sequence[float]] | tuple[np.ndarray, np.ndarray, Sequence[float], str]
Panoptica = Callable[..., list[dict[str, Any]]]
RUNNER = Path(__file__).with_name("panoptica_runner.py")
PYTHON_VARIABLE = "MEDSEG_PANOPTICA_PYTHON"


@pytest.fixture(scope="session")
def panoptica(tmp_path_factory: pytest.TempPathFactory) -> Panoptica:
    """``panoptica(scenes, tolerance_mm=0.5) -> [case]``: each ``(pred, ref, spacing)`` label-map scene scored by
    ``brats-evaluation``'s ``mets`` configuration, each ``(pred, ref, spacing, config)`` by ``config`` (``gli``,
    ``ped``, ``MenPre``, ``MenRT``, ``GoAT``), all in one subprocess (see ``panoptica_runner.py`` for what each
    case holds)."""
    python = os.environ.get(PYTHON_VARIABLE)
    if not python:
        pytest.skip(f"{PYTHON_VARIABLE} does not name a python with brats-evaluation (Panoptica needs numpy < 2.3)")
    if not Path(python).is_file():
        pytest.fail(f"{PYTHON_VARIABLE}={python} is not a file")
    folder = tmp_path_factory.mktemp("panoptica")

    def score(scenes: Sequence[Scene], tolerance_mm: float = 0.5) -> list[dict[str, Any]]:
        arrays: dict[str, np.ndarray] = {"tolerance": np.asarray(tolerance_mm, dtype=float)}
        for i, (pred, ref, spacing, *config) in enumerate(scenes):
            arrays |= {f"pred_{i}": pred, f"ref_{i}": ref, f"spacing_{i}": np.asarray(spacing, dtype=float)}
            arrays[f"config_{i}"] = np.asarray(config[0] if config else "mets")
        scenes_path, out_path = folder / "scenes.npz", folder / "out.json"
        np.savez(scenes_path, **arrays)
        done = subprocess.run(
            [python, str(RUNNER), str(scenes_path), str(out_path)],
            capture_output=True,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(out_path.read_text())

    return score
