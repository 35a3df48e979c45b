import sys
from pathlib import Path

# examples/ is not a package; its modules are imported by bare name in tests.
_EXAMPLES = str(Path(__file__).resolve().parent.parent / "examples")
if _EXAMPLES not in sys.path:
    sys.path.insert(0, _EXAMPLES)
