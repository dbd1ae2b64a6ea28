"""Fields shared by the language-model configs (see char_lm.py and word_lm.py)."""

import ml_collections


def lm_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.cell = "lstm"  # a registry name, optionally with options: "gru:reset_after=True"
    # K > 1: a sweep trains points that differ only in seed, learning rate, clip norm or init scales
    # K at a time, as vmapped trials of one jitted program (rnn_jax.trials)
    c.trials_per_program = 1
    c.model = ml_collections.ConfigDict(dict(
        embed_size=64, hidden_size=512, num_layers=2, dropout=0.0, variational=False,
        kernel_init="lecun_normal", recurrent_init="orthogonal",  # cell options (a cell spec wins)
        init_scale=1.0,      # cells: scale of the initialisers (uniform: ±init_scale/sqrt(hidden))
        embed_scale=1.0,     # embedding: uniform ±embed_scale (inputs of unit scale)
        output_scale=1.0,    # softmax weights: uniform ±output_scale/sqrt(hidden)
        impl="fused"))
    c.data = ml_collections.ConfigDict(dict(
        kind="char", path="", dir="", splits=(0.9, 0.05, 0.05), tfds_data_dir=""))
    c.train = ml_collections.ConfigDict(dict(
        batch_size=64, seq_len=100, bptt="truncated", num_steps=1000, num_epochs=0,
        loss_reduction="mean",  # "sum_time": summed over time, averaged over the batch (Zaremba)
        eval_batch_size=64, test_batch_size=0,  # 0: same as eval_batch_size
        log_every=20, eval_every=200, checkpoint_every=200, max_to_keep=2,
        sample_length=200, sample_temperature=0.8,
        data_parallel=False))  # True: the batch split over all local devices, parameters replicated
    c.optim = ml_collections.ConfigDict(dict(
        name="adam", learning_rate=2e-3, momentum=0.9, b1=0.9, b2=0.999, eps=1e-8, rmsprop_decay=0.9,
        weight_decay=0.0, max_norm=5.0,
        schedule=ml_collections.ConfigDict(dict(
            name="cosine", decay_factor=2.0, decay_start_epoch=4, patience=0, max_halvings=5,
            warmup_steps=0, decay_begin=0.5, end_fraction=0.0))))
    return c
