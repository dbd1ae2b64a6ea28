"""Parity with PyTorch's nn.LSTM / nn.GRU; skipped where torch (the optional extra) is absent."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import cells, convert, layers
from tests.optional import torch_or_skip

torch = torch_or_skip()  # required in CI (RNN_JAX_REQUIRE_TORCH=1)

B, T, I, H = 2, 6, 3, 5


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_outputs_and_gradients_match_torch(kind):
    torch.manual_seed(0)
    module = (torch.nn.LSTM if kind == "lstm" else torch.nn.GRU)(I, H, batch_first=True).double()
    xs_np = np.random.default_rng(0).standard_normal((B, T, I))
    xs_t = torch.tensor(xs_np, requires_grad=True)
    out_t, _ = module(xs_t)
    (out_t ** 2).sum().backward()

    if kind == "lstm":
        cell, params = cells.get("lstm", param_dtype="float64"), convert.from_torch_lstm(module)
    else:
        cell, params = cells.get("gru", reset_after=True, param_dtype="float64"), convert.from_torch_gru(module)
    with jax.enable_x64(True):
        params = {k: jnp.asarray(v) for k, v in params.items()}

        def loss(p, xs):
            return jnp.sum(layers.rnn(cell, p, xs)[1] ** 2)

        _, hs = layers.rnn(cell, params, jnp.asarray(xs_np))
        np.testing.assert_allclose(np.asarray(hs), out_t.detach().numpy(), atol=1e-10)
        g_params, g_xs = jax.grad(loss, argnums=(0, 1))(params, jnp.asarray(xs_np))
    np.testing.assert_allclose(np.asarray(g_xs), xs_t.grad.numpy(), atol=1e-10)
    # Recurrent weights: torch stacks gates along rows of weight_hh_l0.
    order = "ifgo" if kind == "lstm" else "rzh"
    w_hh_grad = module.weight_hh_l0.grad.numpy()
    for k, g in enumerate(order):
        np.testing.assert_allclose(np.asarray(g_params[f"W_h{g}"]).T, w_hh_grad[k * H:(k + 1) * H], atol=1e-10)
