"""Comparing pytrees and record lists in tests: structure and length first, then values.

``zip`` over two lists of leaves or records stops at the shorter one, so a missing leaf or record
passes unnoticed; these helpers fail on it, naming what differs.
"""

from __future__ import annotations

import math

import jax
import numpy as np


def assert_trees_close(actual, expected, *, rtol: float = 0.0, atol: float = 0.0, what: str = "tree",
                       check_structure: bool = True) -> None:
    """Same number of leaves (and the same tree structure unless ``check_structure=False``, e.g.
    a NamedTuple against a plain tuple), the same shapes, then values within ``rtol``/``atol``
    (bit for bit with the defaults)."""
    leaves_a, tree_a = jax.tree.flatten(actual)
    leaves_b, tree_b = jax.tree.flatten(expected)
    assert len(leaves_a) == len(leaves_b), f"{what}: {len(leaves_a)} leaves, expected {len(leaves_b)}"
    if check_structure:
        assert tree_a == tree_b, f"{what}: structure {tree_a} differs from {tree_b}"
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(expected)[0]]
    for path, a, b in zip(paths, leaves_a, leaves_b):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape, f"{what}{path}: shape {a.shape}, expected {b.shape}"
        if rtol == 0.0 and atol == 0.0:
            np.testing.assert_array_equal(a, b, err_msg=f"{what}{path}")
        else:
            np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=f"{what}{path}")


def assert_records_close(actual: list, expected: list, *, rtol: float = 0.0, atol: float = 0.0,
                         what: str = "records", ignore=()) -> None:
    """Two lists of records (dicts): the same length, the same keys per record (less ``ignore``),
    then equal values (floats within ``rtol``/``atol``)."""
    assert len(actual) == len(expected), f"{what}: {len(actual)} records, expected {len(expected)}"
    for i, (a, b) in enumerate(zip(actual, expected)):
        at = f"{what}[{i}] (step {b.get('step')})"
        keys_a, keys_b = set(a) - set(ignore), set(b) - set(ignore)
        assert keys_a == keys_b, f"{at}: keys {sorted(keys_a ^ keys_b)} are in only one of them"
        for key in sorted(keys_b):
            x, y = a[key], b[key]
            if isinstance(y, float) and isinstance(x, (int, float)) and not isinstance(x, bool):
                same = (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=rtol, abs_tol=atol)
                assert same, f"{at}: {key} = {x!r}, expected {y!r}"
            else:
                assert x == y, f"{at}: {key} = {x!r}, expected {y!r}"
