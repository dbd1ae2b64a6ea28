"""Data-parallel training: the batch split over 2 host devices matches the single-device run."""

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import sys
    import jax, numpy as np, pytest
    from rnn_jax import train
    from tests.lm_helpers import tiny_config, write_corpus
    from tests.trees import assert_trees_close
    import pathlib
    assert jax.local_device_count() == 2, jax.devices()
    tmp = pathlib.Path(sys.argv[1])
    path = write_corpus(tmp / "text.txt")
    out = {}
    for dp in (False, True):
        config = tiny_config(path, num_steps=8, eval_every=4, checkpoint_every=4, sample_length=0)
        config.train.data_parallel = dp
        result = train.train_and_evaluate(config, str(tmp / f"run_{dp}"), log=lambda m: None)
        assert result["status"] == "completed", result
        out[dp] = (result, train.load_run(str(tmp / f"run_{dp}"), "latest")[1])
    (r0, p0), (r1, p1) = out[False], out[True]
    assert abs(r0["final_valid_loss"] - r1["final_valid_loss"]) < 1e-5, (r0, r1)
    assert_trees_close(p1, p0, rtol=2e-5, atol=2e-6, what="params")
    # the placement really splits the batch: each device holds half of it, and the step keeps it so
    config = tiny_config(path)
    place = train.Placement(True)
    model = train.make_model(config, 12)
    optimizer = train.make_optimizer(config)
    params = place.replicate(model.init(jax.random.PRNGKey(0)))
    carry = place.split_batch(model.zero_carry(4))
    x = place.split_batch(np.zeros((4, 8), np.int32))
    assert x.sharding.shard_shape(x.shape) == (2, 8)
    step = train.make_train_step(model, optimizer, 5.0)
    _, _, carry, _ = step(params, place.replicate(optimizer.init(params)), carry, x, x, None)
    leaf = jax.tree.leaves(carry)[0]
    assert leaf.sharding.shard_shape(leaf.shape) == (2, leaf.shape[1]), leaf.sharding
    config.train.update(data_parallel=True, batch_size=3, eval_batch_size=4)
    with pytest.raises(ValueError, match="train.batch_size = 3 does not split over the 2 local devices"):
        train.validate_config(config)
    print("OK")
""")


def test_two_devices_match_one(tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT,
           "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()}
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("OK"), out.stderr[-3000:]
