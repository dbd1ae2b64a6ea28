"""Sweeps: points from a config's ``sweep(add)``, run dirs named by a stable hash, launchers."""

from rnn_jax.sweep.local import launch_local, point_state, record_sweep, run_dir, run_point, summarize, sweep_status
from rnn_jax.sweep.points import apply_overrides, expand, load_config_module, point_config, point_name, sweep_points

__all__ = ["apply_overrides", "expand", "launch_local", "load_config_module", "point_config",
           "point_name", "point_state", "record_sweep", "run_dir", "run_point", "summarize", "sweep_points",
           "sweep_status"]
