"""Shared pytest setup: CPU JAX, fp32 matmuls, deterministic; one XLA compilation cache per test session."""
import os
import shutil
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Exact fp32 matmuls so parity tests compare like with like.
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Compiling dominates most tests (tiny models); fewer XLA passes cut it by a quarter to a third.
# Tests that compare two programs compile both alike; tolerances are those of float32 rounding.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
if "jax" in sys.modules:   # imported by a plugin before this file: its config has read the environment
    import jax

    jax.config.update("jax_disable_most_optimizations", os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] == "1")

# A persistent XLA compilation cache private to this test session, shared by the pytest-xdist
# workers and every subprocess they start (they inherit the environment): a program that several
# tests compile (the tiny model's sampler, the policy step, the examples' programs) is compiled
# once per session instead of once per test and process. It only skips recompiling identical
# programs; what runs is the same. The controller (or a run without xdist) creates the directory
# before the workers start and removes it at the end.
_CACHE_VAR = "TRACERL_TEST_XLA_CACHE"
_OWN_CACHE = None
if "PYTEST_XDIST_WORKER" not in os.environ and _CACHE_VAR not in os.environ:
    _OWN_CACHE = os.environ[_CACHE_VAR] = tempfile.mkdtemp(prefix="tracerl_xla_cache_")
if _CACHE_VAR in os.environ:
    # No size limit: a limit makes every write rescan the whole directory. (An entry read while another
    # process writes it fails to decompress; JAX then warns and compiles, as without a cache.)
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.environ[_CACHE_VAR])
    if "jax" in sys.modules:   # imported by a plugin before this file: its config has read the environment
        import jax

        jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])


def pytest_unconfigure(config):
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


def pytest_sessionfinish(session, exitstatus):
    # pytest-xdist stops a worker by interrupting its main thread (execnet's interrupt_main); if a
    # garbage collection runs then, the KeyboardInterrupt lands in hypothesis's gc-timing callback
    # and pytest reports it as an unraisable exception. The timing only feeds hypothesis's own
    # statistics, so its callbacks go before the session ends.
    import gc

    gc.callbacks[:] = [cb for cb in gc.callbacks if "hypothesis" not in getattr(cb, "__module__", "")]
