"""Reading the small JSON files medseg consumes (manifests, dataset.json, case lists)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medseg.errors import MedsegInputError


def read_json(path: str | Path, *, what: str) -> Any:
    """Parse the JSON file ``path``; ``what`` names it in errors (e.g. ``"dataset.json"``).

    Raises:
        MedsegInputError: ``"<what> not found"``, ``"cannot read <what>: ..."`` or ``"<what> is not
            valid JSON: ..."``, naming the file.
    """
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MedsegInputError(f"{what} not found", path=path) from None
    except OSError as exc:  # a folder, no permission
        raise MedsegInputError(f"cannot read {what}: {exc.strerror}", path=path) from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise MedsegInputError(f"{what} is not valid JSON: {exc}", path=path) from None
