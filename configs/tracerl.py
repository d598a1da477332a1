"""Default TraceRL recipe: a small block-diffusion model on built-in arithmetic, on a CPU.

Run:  python examples/tracerl.py                       (this config)
      python examples/tracerl.py --config.rl.total_steps=5 --config.workdir=/tmp/run

The recipe's fields, their defaults and their meaning live with the library,
in ``tracerl_jax/rl/recipe.py`` (``python examples/tracerl.py --help`` lists
them); the other recipes in this directory start from it.
"""

from tracerl_jax.rl.recipe import get_config  # noqa: F401
