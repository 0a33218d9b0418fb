"""Freed memory kept in the process on the CPU: a tensor allocated again after one of its size was freed takes no
new pages (counted as minor page faults, not timed); the user's own malloc settings are kept."""
import platform

import pytest

from passl_tl.utils.cpu_memory import keep_freed_memory, user_malloc_settings

from tests.utils.test_quiet_output import run_python

# Pages a 64 MB tensor faults in when it is allocated again after being freed.
REFAULT = """
    import resource, sys
    import passl_tl, paddle
    from passl_tl.utils.cpu_memory import keep_freed_memory
    print(keep_freed_memory())
    def faults(): return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = paddle.ones([16 * 1024 * 1024]); del x  # 64 MB, freed
    before = faults()
    x = paddle.ones([16 * 1024 * 1024])
    print(faults() - before)
"""
PAGES_64MB = 64 * 1024 * 1024 // 4096


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_a_freed_tensors_memory_is_reused_without_page_faults():
    kept = run_python(REFAULT.replace("print(keep_freed_memory())", "print(keep_freed_memory({}))"))
    default = run_python(REFAULT.replace("print(keep_freed_memory())", "print('default')"))
    assert kept.returncode == default.returncode == 0, kept.stderr + default.stderr
    (flag, kept_faults), (_, default_faults) = (run.stdout.split() for run in (kept, default))
    assert flag == "True"
    assert int(default_faults) > PAGES_64MB // 2  # glibc unmapped the block: every page faults in again
    assert int(kept_faults) < PAGES_64MB // 20


@pytest.mark.parametrize("environ, found", [
    ({"MALLOC_ARENA_MAX": "2"}, []),  # not a malloc parameter variable (no trailing underscore)
    ({"MALLOC_MMAP_THRESHOLD_": "65536"}, ["MALLOC_MMAP_THRESHOLD_"]),
    ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}, ["GLIBC_TUNABLES"]),
    ({"GLIBC_TUNABLES": "glibc.pthread.rseq=0"}, []),
])
def test_the_users_own_malloc_settings_are_found(environ, found):
    assert user_malloc_settings(environ) == found


def test_the_users_own_malloc_settings_are_kept():
    assert keep_freed_memory({"MALLOC_TRIM_THRESHOLD_": "0"}) is False
