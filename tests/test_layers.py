import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from rnn_jax import cells, layers
from tests.test_cells import CASES, H, in_size, random_carry, random_params
from tests.trees import assert_trees_close

B, T = 3, 5
LENGTHS = np.array([5, 2, 4])


def tree_allclose(a, b, tol):
    assert_trees_close(a, b, rtol=tol, atol=tol)


def setup(name, options, seed=0, dtype=jnp.float64):
    cell = cells.get(name, param_dtype=jnp.dtype(dtype).name, **options)
    size = in_size(name, options)
    key = jax.random.PRNGKey(seed)
    params = random_params(cell, key, size, dtype=dtype)
    xs = jax.random.normal(jax.random.fold_in(key, 1), (B, T, size), dtype)
    carry = random_carry(cell, jax.random.fold_in(key, 2), B, dtype)
    return cell, params, xs, carry


def make_loss(cell, impl, **kwargs):
    """A loss that touches every output and the final carry, with fixed random weights."""

    def loss(params, xs, carry):
        final, hs = layers.rnn(cell, params, xs, carry, impl=impl, **kwargs)
        w = jnp.cos(jnp.arange(hs.size, dtype=hs.dtype)).reshape(hs.shape)
        leaves = jax.tree.leaves(final)
        return jnp.sum(w * hs) + sum(jnp.sum(jnp.sin(c) * (k + 1)) for k, c in enumerate(leaves))

    return loss


@pytest.mark.parametrize("name, options", CASES, ids=[f"{n}-{o}" if o else n for n, o in CASES])
def test_fused_matches_loop_reference_and_autodiff(name, options):
    """Fused path == Python loop of step (outputs) and == plain autodiff paths (all gradients)."""
    with jax.enable_x64(True):
        cell, params, xs, carry = setup(name, options)
        # Outputs: a Python loop of the reference step.
        c, loop_hs = carry, []
        for t in range(T):
            c, h = cell.step(params, c, xs[:, t])
            loop_hs.append(h)
        final, hs = jax.jit(functools.partial(layers.rnn, cell))(params, xs, carry)
        tree_allclose(hs, jnp.stack(loop_hs, axis=1), 1e-12)
        tree_allclose(final, c, 1e-12)
        # Gradients w.r.t. parameters, inputs and the initial carry, with lengths and reversal.
        grads = {}
        for impl in layers.IMPLS:
            loss = make_loss(cell, impl, seq_lengths=jnp.asarray(LENGTHS), reverse=True)
            grads[impl] = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(params, xs, carry)
        tree_allclose(grads["fused"], grads["reference"], 1e-10)
        tree_allclose(grads["autodiff"], grads["reference"], 1e-10)


@pytest.mark.parametrize("name", ["lstm", "gru", "mut1", "fgr"])
def test_fused_gradients_numerically(name):
    """check_grads (finite differences) on the custom-VJP path, float64."""
    options = {"reset_after": True} if name == "gru" else {}
    with jax.enable_x64(True):
        cell, params, xs, carry = setup(name, options, seed=3)
        resets = jnp.zeros((B, T), bool).at[0, 2].set(True)
        loss = make_loss(cell, "fused", seq_lengths=jnp.asarray(LENGTHS), resets=resets)
        check_grads(loss, (params, xs, carry), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", ["lstm", "mut1"])
def test_fused_gradients_with_all_carries_and_under_vmap(name):
    """Both reverse scans (input gradient written in place for lstm, a fresh buffer for mut1)
    against the reference path, with return_all_carries, lengths, and vmapped over trials."""
    assert cells.get(name).inputs_only_added == (name == "lstm")
    with jax.enable_x64(True):
        cell, params, xs, carry = setup(name, {}, seed=6)

        def loss(impl):
            def f(params, xs, carry):
                final, carries = layers.rnn(cell, params, xs, carry, impl=impl, return_all_carries=True,
                                            seq_lengths=jnp.asarray(LENGTHS))
                return sum(jnp.sum(jnp.cos(c) * (k + 1)) for k, c in enumerate(jax.tree.leaves((final, carries))))
            return jax.grad(f, argnums=(0, 1, 2))

        g = {impl: loss(impl)(params, xs, carry) for impl in ("fused", "reference")}
        tree_allclose(g["fused"], g["reference"], 1e-10)
        params2 = jax.tree.map(lambda p: jnp.stack([p, 1.1 * p]), params)
        xs2 = jnp.stack([xs, 0.5 * xs])
        gv = {impl: jax.vmap(loss(impl), in_axes=(0, 0, None))(params2, xs2, carry) for impl in ("fused", "reference")}
        tree_allclose(gv["fused"], gv["reference"], 1e-10)
        tree_allclose(jax.tree.map(lambda v: v[0], gv["fused"]), g["fused"], 1e-12)


def _saved_per_step(cell, params, xs, **kwargs):
    """Number of per-step ``[T, B, n]`` values the fused forward scan emits under ``jax.grad``
    (the first scan of the jaxpr: the layer's forward scan, the only one before the reverse one)."""
    f = lambda p: jnp.sum(layers.rnn(cell, p, xs, **kwargs)[1])
    scans = [e for e in jax.make_jaxpr(jax.grad(f))(params).jaxpr.eqns if e.primitive.name == "scan"]
    return sum(v.aval.shape[:2] == (T, B) for v in scans[0].outvars)


# How many nonlinearity outputs each cell's next carry gives: the LSTM's tanh c' (recomputed from
# the next c; for NOG it is also h itself), FGR's gates i, f, o (separate sigmoids, as FGR has
# peepholes) and tanh c', the RNN's h; none for the GRU.
@pytest.mark.parametrize("name, derived", [("lstm", 1), ("fgr", 4), ("nog", 1), ("rnn", 1), ("gru", 0)])
def test_fused_takes_values_the_next_carry_gives_from_it(name, derived):
    """Without length masks the forward scan does not save nonlinearity outputs that the next
    step's carry gives; gradients == reference, plain and (where some are derived) with resets,
    reversed."""
    with jax.enable_x64(True):
        cell, params, xs, carry = setup(name, {}, seed=7)
        full = jnp.full((B,), T)
        assert (_saved_per_step(cell, params, xs, seq_lengths=full)
                - _saved_per_step(cell, params, xs)) == derived
        resets = jnp.zeros((B, T), bool).at[1, 2].set(True).at[0, 4].set(True)
        variants = [{}] + ([{"resets": resets, "reverse": True}] if derived else [])
        for kwargs in variants:
            g = {impl: jax.jit(jax.grad(make_loss(cell, impl, **kwargs), argnums=(0, 1, 2)))(params, xs, carry)
                 for impl in ("fused", "reference")}
            tree_allclose(g["fused"], g["reference"], 1e-10)


@pytest.mark.parametrize("name", ["lstm", "mut1"])
def test_zero_length_sequences(name):
    """T = 0: the final carry is the initial one; both reverse scans (in place for lstm) run."""
    with jax.enable_x64(True):
        cell, params, xs, carry = setup(name, {}, seed=8)
        g = {impl: jax.grad(make_loss(cell, impl), argnums=(0, 1, 2))(params, xs[:, :0], carry)
             for impl in ("fused", "reference")}
        tree_allclose(g["fused"], g["reference"], 1e-12)
        assert all(float(jnp.abs(v).max()) == 0 for v in jax.tree.leaves(g["fused"][0]))


def _lstm64(seed=0):
    return setup("lstm", {}, seed)


def test_seq_lengths_give_carry_at_last_valid_step():
    with jax.enable_x64(True):
        cell, params, xs, carry = _lstm64()
        final, hs = layers.rnn(cell, params, xs, carry, seq_lengths=jnp.asarray(LENGTHS))
        _, all_hs = layers.rnn(cell, params, xs, carry, return_all_carries=True)
        for b, n in enumerate(LENGTHS):
            # Each sequence alone, cut at its length.
            one = jax.tree.map(lambda c: c[b:b + 1], carry)
            c_b, h_b = layers.rnn(cell, params, xs[b:b + 1, :n], one)
            np.testing.assert_allclose(final.h[b], c_b.h[0], atol=1e-12)
            np.testing.assert_allclose(final.c[b], c_b.c[0], atol=1e-12)
            np.testing.assert_allclose(hs[b, :n], h_b[0], atol=1e-12)
            np.testing.assert_array_equal(np.asarray(hs[b, n:]), 0.0)
            np.testing.assert_allclose(final.c[b], all_hs.c[b, n - 1], atol=1e-12)


def test_reverse_respects_lengths():
    with jax.enable_x64(True):
        cell, params, xs, carry = _lstm64(1)
        final, hs = layers.rnn(cell, params, xs, carry, seq_lengths=jnp.asarray(LENGTHS), reverse=True)
        for b, n in enumerate(LENGTHS):
            one = jax.tree.map(lambda c: c[b:b + 1], carry)
            c_b, h_b = layers.rnn(cell, params, xs[b:b + 1, :n][:, ::-1], one)
            np.testing.assert_allclose(hs[b, :n], h_b[0, ::-1], atol=1e-12)  # back in input order
            np.testing.assert_allclose(final.h[b], c_b.h[0], atol=1e-12)
            np.testing.assert_array_equal(np.asarray(hs[b, n:]), 0.0)
        # Without lengths, reverse is a plain flip.
        _, hs_rev = layers.rnn(cell, params, xs, carry, reverse=True)
        _, hs_flip = layers.rnn(cell, params, xs[:, ::-1], carry)
        np.testing.assert_allclose(hs_rev, hs_flip[:, ::-1], atol=1e-12)


def test_resets_zero_the_carry_mid_sequence():
    with jax.enable_x64(True):
        cell, params, xs, carry = _lstm64(2)
        resets = np.zeros((B, T), bool)
        resets[0, 2] = True
        _, hs = layers.rnn(cell, params, xs, carry, resets=jnp.asarray(resets))
        _, fresh = layers.rnn(cell, params, xs[:1, 2:])  # zero carry from step 2
        np.testing.assert_allclose(hs[0, 2:], fresh[0], atol=1e-12)
        _, plain = layers.rnn(cell, params, xs, carry)
        np.testing.assert_allclose(hs[1:], plain[1:], atol=1e-12)
        np.testing.assert_allclose(hs[0, :2], plain[0, :2], atol=1e-12)
        assert not np.allclose(hs[0, 2:], plain[0, 2:])


def test_layouts_unroll_and_all_carries():
    with jax.enable_x64(True):
        cell, params, xs, carry = _lstm64(4)
        final, hs = layers.rnn(cell, params, xs, carry)
        final_tm, hs_tm = layers.rnn(cell, params, jnp.swapaxes(xs, 0, 1), carry, time_major=True)
        np.testing.assert_allclose(hs_tm, jnp.swapaxes(hs, 0, 1), atol=1e-12)
        tree_allclose(final_tm, final, 1e-12)
        lengths = jnp.asarray(LENGTHS)
        f_len, h_len = layers.rnn(cell, params, xs, carry, seq_lengths=lengths, reverse=True)
        f_len_tm, h_len_tm = layers.rnn(cell, params, jnp.swapaxes(xs, 0, 1), carry, seq_lengths=lengths,
                                        reverse=True, time_major=True)
        np.testing.assert_allclose(h_len_tm, jnp.swapaxes(h_len, 0, 1), atol=1e-12)
        tree_allclose(f_len_tm, f_len, 1e-12)
        final_u, carries = layers.rnn(cell, params, xs, carry, unroll=2, return_all_carries=True)
        assert isinstance(carries, cells.LSTMCarry) and carries.c.shape == (B, T, H)
        np.testing.assert_allclose(carries.h, hs, atol=1e-12)
        np.testing.assert_allclose(carries.c[:, -1], final.c, atol=1e-12)
        tree_allclose(final_u, final, 1e-12)
        # Unbatched [T, F] input.
        one = jax.tree.map(lambda c: c[0], carry)
        c1, h1 = layers.rnn(cell, params, xs[0], one)
        np.testing.assert_allclose(h1, hs[0], atol=1e-12)
        np.testing.assert_allclose(c1.h, final.h[0], atol=1e-12)
        # Registered names work in place of cell objects.
        np.testing.assert_allclose(layers.rnn("lstm", params, xs, carry)[1], hs, atol=1e-12)


def test_unroll_gradients_match():
    with jax.enable_x64(True):
        cell, params, xs, carry = setup("gru", {}, 5)
        g1 = jax.grad(make_loss(cell, "fused", unroll=1), argnums=(0, 1, 2))(params, xs, carry)
        g3 = jax.grad(make_loss(cell, "fused", unroll=3), argnums=(0, 1, 2))(params, xs, carry)
        tree_allclose(g1, g3, 1e-12)


def test_bfloat16_compute_trains():
    cell = cells.get("lstm", dtype="bfloat16")
    params = cell.init(jax.random.PRNGKey(0), 3, 8)
    xs = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 3))

    def loss(p, c):
        return jnp.mean(layers.rnn(c, p, xs)[1].astype(jnp.float32) ** 2)

    g16 = jax.grad(loss)(params, cell)
    g32 = jax.grad(loss)(params, cells.get("lstm"))
    for k in params:
        assert g16[k].dtype == jnp.float32  # gradients come back in the parameter dtype
        np.testing.assert_allclose(g16[k], g32[k], atol=5e-2 * float(jnp.abs(g32[k]).max()) + 1e-3)


@pytest.mark.parametrize("kwargs, match", [
    ({"impl": "cudnn"}, r"invalid impl='cudnn'; allowed values: 'fused', 'autodiff', 'reference'"),
    ({"unroll": 0}, r"unroll must be a positive integer, got 0"),
    ({"seq_lengths": jnp.array([1, 2])}, r"seq_lengths must have shape \[batch\]=\(3,\), got \(2,\)"),
    ({"resets": jnp.zeros((3, 4), bool)}, r"resets must have shape \(3, 5\), got \(3, 4\)"),
])
def test_bad_layer_arguments(kwargs, match):
    cell = cells.get("gru")
    params = cell.init(jax.random.PRNGKey(0), 2, H)
    with pytest.raises(ValueError, match=match):
        layers.rnn(cell, params, jnp.ones((B, T, 2)), **kwargs)
    with pytest.raises(ValueError, match=r"xs must have shape \[batch, time, features\].*got shape \(5,\)"):
        layers.rnn(cell, params, jnp.ones((5,)))


# --- stacks and bidirectional layers -----------------------------------------------------------


def test_stacked_rnn_composes_layers_with_dropout_and_residual():
    cell = cells.get("gru")
    stack = layers.init_stack(cell, jax.random.PRNGKey(0), 3, H, num_layers=3)
    assert [p["W_xr"].shape for p in stack] == [(3, H), (H, H), (H, H)]
    xs = jax.random.normal(jax.random.PRNGKey(1), (B, T, 3))
    finals, hs = layers.stacked_rnn(cell, stack, xs)
    h = xs
    for k, p in enumerate(stack):
        c, h = layers.rnn(cell, p, h)
        np.testing.assert_allclose(finals[k], c, atol=1e-6)
    np.testing.assert_allclose(hs, h, atol=1e-6)
    # Dropout: identity without a key, random with one, never after the last layer.
    _, same = layers.stacked_rnn(cell, stack, xs, dropout_rate=0.5)
    np.testing.assert_allclose(same, hs, atol=1e-6)
    _, dropped = layers.stacked_rnn(cell, stack, xs, dropout_rate=0.5, dropout_key=jax.random.PRNGKey(2))
    assert not np.allclose(dropped, hs)
    one = layers.init_stack(cell, jax.random.PRNGKey(0), 3, H, num_layers=1)
    _, d1 = layers.stacked_rnn(cell, one, xs, dropout_rate=0.5, dropout_key=jax.random.PRNGKey(2))
    np.testing.assert_allclose(d1, layers.rnn(cell, one[0], xs)[1], atol=1e-6)
    # Residual: layers whose input and output sizes match add their input.
    _, res = layers.stacked_rnn(cell, stack[:2], xs, residual=True)
    _, h0 = layers.rnn(cell, stack[0], xs)  # 3 -> H: no residual
    _, h1 = layers.rnn(cell, stack[1], h0)
    np.testing.assert_allclose(res, h1 + h0, atol=1e-6)
    _, res_len = layers.stacked_rnn(cell, stack[:2], xs, residual=True, seq_lengths=jnp.asarray(LENGTHS))
    np.testing.assert_array_equal(np.asarray(res_len[1, 2:]), 0.0)  # padding stays zero
    with pytest.raises(ValueError, match=r"dropout rate must be in \[0, 1\), got 1.0"):
        layers.stacked_rnn(cell, stack, xs, dropout_rate=1.0, dropout_key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"got 1 carries for 3 layers"):
        layers.stacked_rnn(cell, stack, xs, [None])


def test_bidirectional():
    cell = cells.get("lstm")
    params = layers.init_stack(cell, jax.random.PRNGKey(0), 3, H, num_layers=2, bidirectional=True)
    xs = jax.random.normal(jax.random.PRNGKey(1), (B, T, 3))
    lengths = jnp.asarray(LENGTHS)
    (c_fw, c_bw), hs = layers.bidirectional(cell, params[0], xs, seq_lengths=lengths)
    f_fw, h_fw = layers.rnn(cell, params[0]["fw"], xs, seq_lengths=lengths)
    f_bw, h_bw = layers.rnn(cell, params[0]["bw"], xs, seq_lengths=lengths, reverse=True)
    np.testing.assert_allclose(hs, jnp.concatenate([h_fw, h_bw], -1), atol=1e-6)
    np.testing.assert_allclose(c_fw.c, f_fw.c, atol=1e-6)
    np.testing.assert_allclose(c_bw.h, f_bw.h, atol=1e-6)
    _, summed = layers.bidirectional(cell, params[0], xs, seq_lengths=lengths, merge="sum")
    np.testing.assert_allclose(summed, h_fw + h_bw, atol=1e-6)
    finals, out = layers.stacked_rnn(cell, params, xs, seq_lengths=lengths, bidirectional=True)
    assert out.shape == (B, T, 2 * H) and len(finals) == 2 and len(finals[0]) == 2
    _, second = layers.bidirectional(cell, params[1], hs, seq_lengths=lengths)
    np.testing.assert_allclose(out, second, atol=1e-6)
    with pytest.raises(ValueError, match=r"bidirectional does not take return_all_carries"):
        layers.bidirectional(cell, params[0], xs, return_all_carries=True)
    with pytest.raises(ValueError, match=r"invalid merge='max'"):
        layers.bidirectional(cell, params[0], xs, merge="max")


def test_fused_path_rejects_matmul_groups_out_of_order():
    """A cell whose step calls its matmul groups out of declared order would get wrong dW."""
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Swapped(cells.GRUCell):
        recurrent_groups = (("W_hh",), ("W_hr", "W_hz"))

    cell = Swapped(name="swapped")
    params = cell.init(jax.random.PRNGKey(0), 2, H)
    with pytest.raises(ValueError, match=r"swapped: recurrent_step must call ops.mm once per group"):
        layers.rnn(cell, params, jnp.ones((B, T, 2)))


def test_initial_carry_as_plain_tuple_and_bad_carry_shape():
    cell = cells.get("lstm")
    params = cell.init(jax.random.PRNGKey(0), 2, H)
    xs = jnp.ones((B, T, 2))
    c0 = jnp.full((B, H), 0.5)
    final_tuple, hs_tuple = layers.rnn(cell, params, xs, (c0, c0))
    final, hs = layers.rnn(cell, params, xs, cells.LSTMCarry(c0, c0))
    assert isinstance(final_tuple, cells.LSTMCarry)
    np.testing.assert_allclose(hs_tuple, hs)
    with pytest.raises(ValueError, match=r"lstm: carry must be LSTMCarry\(.c., .h.\) of arrays of shape \(3, 4\)"):
        layers.rnn(cell, params, xs, cells.LSTMCarry(c0[:2], c0[:2]))


def test_reverse_with_resets_keeps_documents_apart():
    with jax.enable_x64(True):
        cell, params, xs, carry = setup("gru", {}, 6)
        resets = jnp.zeros((B, T), bool).at[:, 3].set(True)  # documents [0, 3) and [3, 5)
        final, hs = layers.rnn(cell, params, xs, carry, resets=resets, reverse=True)
        _, first = layers.rnn(cell, params, xs[:, :3], reverse=True)  # zero carry at the boundary
        c_second, second = layers.rnn(cell, params, xs[:, 3:], carry, reverse=True)
        np.testing.assert_allclose(hs[:, :3], first, atol=1e-12)
        np.testing.assert_allclose(hs[:, 3:], second, atol=1e-12)
        # The fused gradients agree with the reference on this mask too.
        grads = [jax.grad(make_loss(cell, impl, resets=resets, reverse=True, seq_lengths=jnp.asarray(LENGTHS)),
                          argnums=(0, 1, 2))(params, xs, carry) for impl in ("fused", "reference")]
        tree_allclose(grads[0], grads[1], 1e-10)


def test_reset_flags_in_padding_and_out_of_range_lengths():
    with jax.enable_x64(True):
        cell, params, xs, carry = _lstm64(7)
        resets = jnp.zeros((B, T), bool).at[1, 3].set(True)  # sequence 1 has length 2: padding
        final, _ = layers.rnn(cell, params, xs, carry, seq_lengths=jnp.asarray(LENGTHS), resets=resets)
        one = jax.tree.map(lambda c: c[1:2], carry)
        c_b, _ = layers.rnn(cell, params, xs[1:2, :2], one)
        np.testing.assert_allclose(final.h[1], c_b.h[0], atol=1e-12)
        # Lengths past T are clipped to T, forward and reversed (no NaN from the gather).
        long = jnp.array([T + 3, 2, T])
        for reverse in (False, True):
            f_long, h_long = layers.rnn(cell, params, xs, carry, seq_lengths=long, reverse=reverse)
            f_t, h_t = layers.rnn(cell, params, xs, carry, seq_lengths=jnp.array([T, 2, T]), reverse=reverse)
            assert np.all(np.isfinite(h_long))
            np.testing.assert_allclose(h_long, h_t, atol=1e-12)
        with pytest.raises(ValueError, match=r"seq_lengths must be integers, got dtype float"):
            layers.rnn(cell, params, xs, seq_lengths=jnp.array([1.0, 2.0, 3.0]))
        with pytest.raises(ValueError, match=r"input feature size 7 does not match the parameters' input_size 3"):
            layers.rnn(cell, params, jnp.ones((B, T, 7)))


def test_step_accepts_plain_tuple_carry():
    cell = cells.get("lstm")
    params = cell.init(jax.random.PRNGKey(0), 2, H)
    x = jnp.ones((B, 2))
    c0 = jnp.full((B, H), 0.3)
    for fn in (cell.step, cell.fast_step):
        carry, h = fn(params, (c0, c0), x)
        ref_carry, ref_h = fn(params, cells.LSTMCarry(c0, c0), x)
        assert isinstance(carry, cells.LSTMCarry)
        np.testing.assert_allclose(h, ref_h)
    with pytest.raises(ValueError, match=r"gru: carry must be an array of shape \(3, 4\)"):
        cells.get("gru").step(cells.get("gru").init(jax.random.PRNGKey(0), 2, H), (c0, c0), x)
