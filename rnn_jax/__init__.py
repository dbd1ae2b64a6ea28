"""rnn_jax: recurrent networks as pure JAX functions.

``rnn_jax.cells`` holds the registry of cells (``names()``, ``get(name, **options)``);
``rnn_jax.layers`` scans a cell over time (``rnn``, ``stacked_rnn``, ``bidirectional``);
``rnn_jax.nn`` adapts cells to Flax linen and ``rnn_jax.nnx`` to Flax NNX.
"""

from rnn_jax import cells, layers

__version__ = "0.1.0"
__all__ = ["cells", "layers", "__version__"]
