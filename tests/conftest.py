"""Test-wide settings: the cost model's timing cache goes to a temporary directory, not ~/.cache."""

import pytest


@pytest.fixture(autouse=True, scope="session")
def _cost_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
    yield
    mp.undo()
