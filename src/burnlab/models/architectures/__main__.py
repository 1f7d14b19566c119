"""`python -m burnlab.models.architectures NAME OUT_FOLDER`: build a shipped architecture with
seeded random weights into a folder (what `model.build` does in the run store's cache)."""

import sys
from pathlib import Path

from burnlab.models.architectures import ARCHITECTURES, build_random_pipeline

if len(sys.argv) != 3 or sys.argv[1] not in ARCHITECTURES:
    sys.exit(f"usage: python -m burnlab.models.architectures {{{'|'.join(ARCHITECTURES)}}} OUT_FOLDER")
print("wrote", build_random_pipeline(sys.argv[1], Path(sys.argv[2])))
