"""Shared test helpers: where the reference fixtures live, and small builders."""
import logging
import os

import numpy as np
import pytest

FIXTURES_ENV = "PASSL_TL_FIXTURES"
REQUIRE_ENV = "PASSL_TL_REQUIRE_FIXTURES"  # set by .ci/run: a missing fixture fails instead of skipping
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_FIXTURES = os.path.join(REPO_ROOT, "..", "shared", "fixtures", "reference")


def fixtures_dir() -> str:
    return os.path.abspath(os.environ.get(FIXTURES_ENV, DEFAULT_FIXTURES))


def fixture_path(name: str) -> str:
    """Path of a reference fixture file; skips the test (naming the variable) when absent."""
    path = os.path.join(fixtures_dir(), name)
    if not os.path.exists(path):
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"reference fixture {name} not found in {fixtures_dir()} ({FIXTURES_ENV})")
        pytest.skip(f"reference fixture {name} not found in {fixtures_dir()}; "
                    f"set {FIXTURES_ENV} to the fixtures directory")
    return path


def load_npz(name: str) -> dict:
    with np.load(fixture_path(name)) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def ref(case):
    """The reference arrays of the module's parametrized fixture ``case``."""
    return load_npz(f"{case}.npz")


def capture(layer, pre: bool = False):
    """Record a layer's output (or, with ``pre``, its first input) at its next forward;
    returns the dict that will hold it under ``"value"`` and the hook handle."""
    seen = {}

    def keep(_, inputs, output=None):
        seen["value"] = (inputs[0] if pre else output).numpy()

    handle = layer.register_forward_pre_hook(keep) if pre else layer.register_forward_post_hook(keep)
    return seen, handle


def close(actual, expected, atol: float = 1e-5) -> None:
    np.testing.assert_allclose(actual, expected, rtol=0, atol=atol)


@pytest.fixture(autouse=True)
def logger_propagates_after_each_test():
    """``setup_logger`` (run by the tools) stops the ``passl_tl`` logger propagating; undo it so that
    ``caplog`` sees the records of whatever test runs next."""
    yield
    logging.getLogger("passl_tl").propagate = True
