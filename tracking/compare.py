"""Compare FERN runs in the MLflow store: see fern/tracking/compare.py (``--help`` for options)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fern.tracking.compare import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
