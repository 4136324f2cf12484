"""The test suite: one folder per subpackage of ``webhook``, end-to-end tests in ``e2e``."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = REPO_ROOT / "tests" / "fixtures"
EXAMPLES = REPO_ROOT / "examples"
