"""The suite's hang guard (tests/conftest.py): a test still running after $PASSL_TL_TEST_TIMEOUT seconds ends pytest
with a failure and every thread's stack, instead of stalling CI."""
import subprocess
import sys
import time

from tests.conftest import TEST_TIMEOUT_ENV, clean_env

TESTS = '''import time


def test_a():
    time.sleep(1.5)


def test_b():
    time.sleep(1.5)


def test_hangs():
    time.sleep(120)
'''


def test_a_hung_test_ends_pytest_with_its_stack(tmp_path):
    """Limit 2 s: test_a and test_b (1.5 s each, 3 s together) pass, as the guard is re-armed for every test;
    test_hangs ends the run about 2 s into it, its stack on stderr, exit code 1."""
    (tmp_path / "test_sleeps.py").write_text(TESTS)
    cmd = [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider", "-q", "test_sleeps.py"]
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=tmp_path, env=clean_env(**{TEST_TIMEOUT_ENV: "2"}), capture_output=True,
                          text=True, timeout=100)
    seconds = time.monotonic() - start
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert seconds < 60, seconds
    assert "Timeout (0:00:02)!" in proc.stderr, proc.stderr[-3000:]
    assert 'test_sleeps.py", line 13 in test_hangs' in proc.stderr, proc.stderr[-3000:]
    assert " in test_a\n" not in proc.stderr and " in test_b\n" not in proc.stderr
