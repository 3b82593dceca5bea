"""One test per golden case of the official code, named by case: ``test_golden[sampling]``.

The folder is ``$VIDLAB_GOLDEN_DIR`` or ``shared/golden`` beside the repository (found from this file, not
the working directory); `vidlab.golden` knows the case formats and holds the checkers.
"""

from pathlib import Path

import pytest

from vidlab import golden

REPO_ROOT = Path(__file__).resolve().parents[2]
GOLDEN_DIR = golden.golden_dir(REPO_ROOT)

try:
    CASES, INDEX_ERROR = golden.list_cases(GOLDEN_DIR), None
except golden.GoldenError as error:
    CASES, INDEX_ERROR = [], str(error)


def test_golden_index_is_readable():
    if INDEX_ERROR is not None:
        pytest.fail(INDEX_ERROR, pytrace=False)


@pytest.mark.parametrize("case", CASES)
def test_golden(case):
    golden.run_case(GOLDEN_DIR, case)
