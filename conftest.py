# Puts the repository root on sys.path so tests can import `tests.*` and `experiments.*`.
#
# Tests compile many small, identical programs (each training run builds its own jitted steps, and
# the SIGKILL tests start fresh processes): a persistent compilation cache, private to this test
# session, lets identical programs compile once. Set through the environment so that child
# processes share it.
import atexit
import os
import shutil
import tempfile

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="rnn_jax_test_cache_")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
