"""What a skipped block costs inside `lax.cond` on JAX: its residuals.

To differentiate a `lax.cond`, JAX makes both branches return the union of
their residuals (what the backward pass needs). This traces the VJP of a
`cond` around one dense-GELU-dense residual block and prints the shapes the
forward `cond` returns and what the skip branch computes: buffers shaped
like the block's activations, which a skipped block still allocates. See
`docs/design.md` (path 3). Runs in a second on CPU:

    KERAS_BACKEND=jax .venv/bin/python benchmarks/jax_cond_residuals.py
"""

import jax
import jax.numpy as jnp

TOKENS, DIM, HIDDEN = 512, 64, 256


def block(w, x):
    return x + jax.nn.gelu(x @ w) @ w.T


def loss(w, x, keep):
    y = jax.lax.cond(keep, lambda: block(w, x), lambda: x)
    return jnp.sum(y**2)


def main():
    w = jnp.ones((DIM, HIDDEN))
    x = jnp.ones((TOKENS, DIM))
    jaxpr = jax.make_jaxpr(
        lambda w, x, keep: jax.vjp(lambda w: loss(w, x, keep), w)
    )(w, x, True)
    print(f"jax {jax.__version__}; block input ({TOKENS}, {DIM}), "
          f"hidden ({TOKENS}, {HIDDEN})")
    for eqn in jaxpr.jaxpr.eqns:
        if eqn.primitive.name != "cond":
            continue
        shapes = [str(v.aval) for v in eqn.outvars]
        hidden = sum(f"[{TOKENS},{HIDDEN}]" in s for s in shapes)
        print(f"forward cond returns {len(shapes)} buffers, {hidden} of "
              f"them hidden-sized: {shapes}")
        for index, branch in enumerate(eqn.params["branches"]):
            ops = sorted({e.primitive.name for e in branch.jaxpr.eqns})
            role = "skip" if index == 0 else "run"
            print(f"  {role} branch primitives: {ops}")


if __name__ == "__main__":
    main()
