"""A minimal training loop for tests of model pieces the trainer does not run yet."""

import jax
import optax


def adam_train(model, params, batches, learning_rate: float = 1e-2):
    """Adam on ``model.loss(params, batch) -> (loss, sums)`` over ``batches``; returns the final
    parameters and the loss of every step."""
    opt = optax.adam(learning_rate)

    @jax.jit
    def step(params, state, batch):
        (loss, _), grads = jax.value_and_grad(model.loss, has_aux=True)(params, batch)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    state, losses = opt.init(params), []
    for batch in batches:
        params, state, loss = step(params, state, batch)
        losses.append(float(loss))
    return params, losses
