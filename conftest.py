"""Root conftest: puts the checkout on sys.path so tests import ``components`` and ``pipelines``."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
