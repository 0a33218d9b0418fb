"""What the package prints besides its own output: one line for a missing Paddle, and none of Paddle's warnings that
a user cannot act on (ccache at import, PIR's ``out`` tensor when a program is saved)."""
import os
import subprocess
import sys
import textwrap
import warnings

import pytest

import passl_tl

from tests.conftest import REPO_ROOT, TOOLS_DIR, clean_env


def run_python(code: str, script=None) -> subprocess.CompletedProcess:
    """``code`` run by a fresh interpreter: with ``-c``, or from the file ``script`` (to_static reads the source
    of what it traces)."""
    code = textwrap.dedent(code)
    if script is not None:
        script.write_text(code)
    return subprocess.run([sys.executable, *(["-c", code] if script is None else [str(script)])], cwd=REPO_ROOT,
                          env=clean_env(), capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("tool", ["make_demo_data", "convert_weights", "visualize_token_labels"])
def test_a_tool_without_paddle_says_how_to_install_it(tool):
    path = os.path.join(TOOLS_DIR, f"{tool}.py")
    run = run_python(f"""
        import runpy, sys
        sys.modules["paddle"] = None  # import paddle fails as when it is not installed
        runpy.run_path({path!r}, run_name="__main__")
    """)
    assert (run.returncode, run.stdout, run.stderr) == (2, "", f"error: {passl_tl.PADDLE_MISSING}\n")


def test_an_import_without_paddle_raises_the_same_line():
    run = run_python("""
        import sys
        sys.modules["paddle"] = None
        try:
            import passl_tl.utils.config
        except ModuleNotFoundError as e:
            print(e.name, e, sep=": ")
    """)
    assert (run.returncode, run.stdout) == (0, f"paddle: {passl_tl.PADDLE_MISSING}\n")


def test_paddles_ccache_warning_is_ignored(monkeypatch):
    from paddle.utils.cpp_extension import extension_utils
    monkeypatch.setenv("PATH", "")  # neither ccache nor `which` found: Paddle warns as at its import
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        extension_utils.find_ccache_home()
        passl_tl._ignore_unactionable_warnings()
        extension_utils.find_ccache_home()
        warnings.warn("No ccache found: not Paddle's", UserWarning)  # the filter is Paddle's module only
    assert [str(w.message)[:24] for w in seen] == ["No ccache found. Please ", "No ccache found: not Pad"]


def test_saving_a_program_keeps_stderr_but_the_pir_out_warning(tmp_path):
    """In a fresh process: Paddle logs the warning once per process, at the first softmax it traces."""
    run = run_python("""
        import os, tempfile
        from passl_tl.utils.inference import save_program
        import paddle

        class Noisy(paddle.nn.Layer):
            def __init__(self):
                super().__init__()
                self.fc = paddle.nn.Linear(4, 3)

            def forward(self, x):
                os.write(2, b"written while tracing\\n")
                return paddle.nn.functional.softmax(self.fc(x), -1)

        with tempfile.TemporaryDirectory() as tmp:
            save_program(Noisy(), os.path.join(tmp, "m"), [1, 4])
            print("saved", flush=True)
    """, tmp_path / "save.py")
    assert (run.returncode, run.stdout) == (0, "saved\n"), run.stderr
    assert run.stderr.splitlines() == ["written while tracing"]
