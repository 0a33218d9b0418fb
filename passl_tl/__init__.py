"""passl_tl: vision transformers trained with token labeling (LV-ViT) on PaddlePaddle.

Importing it before Paddle (the tools do) checks that Paddle is installed, silences a warning of Paddle's
import that a user of this package cannot act on, and on AMD CPUs selects the AVX2 code path of Paddle's MKL
(``utils.mkl_code_path``)."""
import importlib.util
import os
import sys
import warnings

__version__ = "0.1.0"

PADDLE_MISSING = ("passl_tl needs PaddlePaddle: pip install -e '.[cpu]' (CPU) or install paddlepaddle-gpu "
                  "(see README)")
_TOOLS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")
_MODEL_API = ("build_model", "create_model", "load_weights")


def _select_mkl_code_path() -> None:
    from .utils.mkl_code_path import select_mkl_code_path  # (imports nothing of Paddle)
    select_mkl_code_path()


def _ignore_unactionable_warnings() -> None:
    """``import paddle`` warns that ccache is missing; ccache only speeds up compiling C++ extensions, which
    passl_tl never does."""
    warnings.filterwarnings("ignore", message="No ccache found", category=UserWarning,
                            module=r"paddle\.utils\.cpp_extension\.extension_utils")


def _require_paddle() -> None:
    """Without Paddle a tool (a script in tools/) prints :data:`PADDLE_MISSING` and exits with code 2, as the
    tools do for bad input; an import elsewhere raises ``ModuleNotFoundError`` with it. Both instead of a
    traceback ending in whichever module first imports Paddle."""
    if importlib.util.find_spec("paddle") is not None:
        return
    if sys.argv and os.path.dirname(os.path.abspath(sys.argv[0])) == _TOOLS_DIR:
        print(f"error: {PADDLE_MISSING}", file=sys.stderr)
        sys.exit(2)
    raise ModuleNotFoundError(PADDLE_MISSING, name="paddle")


_ignore_unactionable_warnings()
_require_paddle()
_select_mkl_code_path()


def __getattr__(name: str):
    # Imported lazily so that `passl_tl.utils` stays importable without building the model zoo.
    if name in _MODEL_API:
        from . import models
        return getattr(models, name)
    raise AttributeError(f"module 'passl_tl' has no attribute '{name}'")
