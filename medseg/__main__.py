"""Allow ``python -m medseg ...`` (used by the Slicer module and by torchrun)."""

from medseg.cli import main

raise SystemExit(main())
