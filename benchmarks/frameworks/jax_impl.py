"""JAX jit versions of the workloads, from the same numpy spec.

The ResNet (W8/W9) runs in NHWC with HWIO weights, the layout XLA's CPU
convolutions (and Flax) use; the input is transposed once, outside the step.
"""

from __future__ import annotations

import numpy as np


def setup_threads(n):
    import os

    os.environ.setdefault("XLA_FLAGS", f"--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={n}")


def version():
    import jax

    return jax.__version__


def _resnet(s):
    """(trainable params, BN running statistics, forward(params, stats, x, train) -> (logits, new stats))."""
    import jax
    import jax.numpy as jnp
    import workloads

    state = s["state"]
    stat_keys = [k for k in state if k.endswith(("running_mean", "running_var"))]
    params = {k: jnp.asarray(v.transpose(2, 3, 1, 0) if v.ndim == 4 else v) for k, v in state.items()
              if k not in stat_keys}
    stats = {k: jnp.asarray(state[k]) for k in stat_keys}

    def conv(x, w, stride):
        pad = (w.shape[0] - 1) // 2
        return jax.lax.conv_general_dilated(x, w, (stride, stride), [(pad, pad), (pad, pad)],
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def bn(x, p, params, stats, new, train):
        if train:
            mean, var = jnp.mean(x, (0, 1, 2)), jnp.var(x, (0, 1, 2))
            n = x.shape[0] * x.shape[1] * x.shape[2]
            new[p + ".running_mean"] = 0.9 * stats[p + ".running_mean"] + 0.1 * mean
            new[p + ".running_var"] = 0.9 * stats[p + ".running_var"] + 0.1 * var * (n / (n - 1))
        else:
            mean, var = stats[p + ".running_mean"], stats[p + ".running_var"]
        return (x - mean) * jax.lax.rsqrt(var + 1e-5) * params[p + ".weight"] + params[p + ".bias"]

    def forward(params, stats, x, train):
        new = {}

        def conv_bn(v, prefix, conv_name, bn_name, stride):
            return bn(conv(v, params[f"{prefix}{conv_name}.weight"], stride), prefix + bn_name, params, stats, new,
                      train)

        h = jax.nn.relu(conv_bn(x, "", "conv1", "bn1", 1))
        for prefix, _, _, stride, down in workloads.resnet_blocks():
            out = jax.nn.relu(conv_bn(h, prefix + ".", "conv1", "bn1", stride))
            out = conv_bn(out, prefix + ".", "conv2", "bn2", 1)
            if down:
                h = conv_bn(h, prefix + ".", "downsample.0", "downsample.1", stride)
            h = jax.nn.relu(out + h)
        logits = jnp.mean(h, (1, 2)) @ params["fc.weight"].T + params["fc.bias"]
        return logits, new

    return params, stats, forward


def _gpt_loss(p, x, y, heads):
    """W10 as in torch_impl.gpt_loss; attention through jax.nn.dot_product_attention (B, T, heads, D layout)."""
    import jax
    import jax.numpy as jnp

    B, T = x.shape
    C = p["wte"].shape[1]

    def ln(v, name):
        mean = jnp.mean(v, -1, keepdims=True)
        var = jnp.mean(jnp.square(v - mean), -1, keepdims=True)
        return (v - mean) * jax.lax.rsqrt(var + 1e-5) * p[name + ".w"] + p[name + ".b"]

    h = p["wte"][x] + p["wpe"][:T]
    q, k, v = jnp.split(ln(h, "ln1") @ p["attn.w_qkv"] + p["attn.b_qkv"], 3, axis=2)
    q, k, v = (t.reshape(B, T, heads, C // heads) for t in (q, k, v))
    o = jax.nn.dot_product_attention(q, k, v, is_causal=True).reshape(B, T, C)
    h = h + o @ p["attn.w_proj"] + p["attn.b_proj"]
    m = ln(h, "ln2")
    h = h + jax.nn.gelu(m @ p["mlp.w_fc"] + p["mlp.b_fc"], approximate=True) @ p["mlp.w_proj"] + p["mlp.b_proj"]
    logits = (ln(h, "lnf") @ p["head"]).reshape(B * T, -1)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y.reshape(-1, 1), axis=1))


def build(name, s, compiled=True):
    import jax
    import jax.numpy as jnp

    if name == "W10":
        params = {k: jnp.asarray(v) for k, v in s["params"].items()}
        x, y, lr, heads = jnp.asarray(s["x"]), jnp.asarray(s["y"]), s["lr"], s["heads"]

        @jax.jit
        def train_gpt(params):
            loss, grads = jax.value_and_grad(_gpt_loss)(params, x, y, heads)
            return jax.tree_util.tree_map(lambda q, g: q - lr * g, params, grads), loss
        state = [params]

        def step_gpt():
            state[0], loss = train_gpt(state[0])
            return float(loss)
        return step_gpt

    if name == "W8":
        params, stats, forward = _resnet(s)
        vel = jax.tree_util.tree_map(jnp.zeros_like, params)
        x, y, lr = jnp.asarray(s["x"].transpose(0, 2, 3, 1)), jnp.asarray(s["y"]), s["lr"]

        def loss_fn(p, stats):
            logits, new = forward(p, stats, x, True)
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1)), new

        @jax.jit
        def train(params, vel, stats):
            (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats)
            vel = jax.tree_util.tree_map(lambda v, g: 0.9 * v + g, vel, grads)
            params = jax.tree_util.tree_map(lambda p, v: p - lr * v, params, vel)
            return params, vel, stats, loss
        state = [params, vel, stats]

        def step():
            state[0], state[1], state[2], loss = train(*state)
            return float(loss)
        return step
    if name == "W9":
        params, stats, forward = _resnet(s)
        x = jnp.asarray(s["x"].transpose(0, 2, 3, 1))
        fwd = jax.jit(lambda p, st, v: forward(p, st, v, False)[0])
        return lambda: np.asarray(fwd(params, stats, x))

    def mlp(params, x, hidden=jax.nn.relu, out=lambda z: z):
        h = x
        for i in range(0, len(params) - 2, 2):
            h = hidden(h @ params[i] + params[i + 1])
        return out(h @ params[-2] + params[-1])

    def ce(logits, y):
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))

    def lenet(p, x):
        def conv(v, w, b, pad):
            out = jax.lax.conv_general_dilated(v, w, (1, 1), [(pad, pad), (pad, pad)])
            return out + b[None, :, None, None]

        def pool(v):
            return jax.lax.reduce_window(v, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
        h = pool(jax.nn.relu(conv(x, p[0], p[1], 2)))
        h = pool(jax.nn.relu(conv(h, p[2], p[3], 0)))
        h = h.reshape(h.shape[0], -1)
        h = jax.nn.relu(h @ p[4] + p[5])
        h = jax.nn.relu(h @ p[6] + p[7])
        return h @ p[8] + p[9]

    def lstm(p, x, H):
        wih, whh, b, hw, hb = p
        T, B, _ = x.shape
        xp = (x.reshape(T * B, -1) @ wih).reshape(T, B, 4 * H) + b

        def cell(carry, xt):
            h, c = carry
            z = xt + h @ whh
            i, f, g, o = jnp.split(z, 4, axis=1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), None
        (h, _), _ = jax.lax.scan(cell, (jnp.zeros((B, H)), jnp.zeros((B, H))), xp)
        return h @ hw + hb

    if name in ("W1", "W2", "W3"):
        model = {"W1": mlp, "W2": lenet, "W3": lambda p, x: lstm(p, x, s["H"])}[name]
        params = [jnp.asarray(p) for p in s["params"]]
        vel = [jnp.zeros_like(p) for p in params]
        x, y, lr = jnp.asarray(s["x"]), jnp.asarray(s["y"]), s["lr"]

        @jax.jit
        def train(params, vel, x, y):
            loss, grads = jax.value_and_grad(lambda p: ce(model(p, x), y))(params)
            vel = [0.9 * v + g for v, g in zip(vel, grads)]
            params = [p - lr * v for p, v in zip(params, vel)]
            return params, vel, loss
        state = [params, vel]

        def step():
            state[0], state[1], loss = train(state[0], state[1], x, y)
            return float(loss)
        return step
    if name == "W4":
        gp, dp = [jnp.asarray(p) for p in s["g_params"]], [jnp.asarray(p) for p in s["d_params"]]
        z, real = jnp.asarray(s["z"]), jnp.asarray(s["real"])
        lr, (b1, b2), eps = s["lr"], s["betas"], s["eps"]
        gen = lambda g: mlp(g, z, jax.nn.relu, jnp.tanh)  # noqa: E731
        disc = lambda d, v: mlp(d, v, lambda a: jax.nn.leaky_relu(a, 0.2))  # noqa: E731

        def bce(logit, target):
            return jnp.mean(jnp.maximum(logit, 0) - logit * target + jnp.log1p(jnp.exp(-jnp.abs(logit))))

        def adam(params, grads, m, v, t):
            m = [b1 * mi + (1 - b1) * g for mi, g in zip(m, grads)]
            v = [b2 * vi + (1 - b2) * g * g for vi, g in zip(v, grads)]
            c1, c2 = 1 - b1 ** t, 1 - b2 ** t
            params = [p - lr * (mi / c1) / (jnp.sqrt(vi / c2) + eps) for p, mi, vi in zip(params, m, v)]
            return params, m, v

        @jax.jit
        def step_fn(gp, dp, mg, vg, md, vd, t):
            def d_loss(d):
                fake = jax.lax.stop_gradient(gen(gp))
                return bce(disc(d, real), 1.0) + bce(disc(d, fake), 0.0)
            dl, dg = jax.value_and_grad(d_loss)(dp)
            dp, md, vd = adam(dp, dg, md, vd, t)
            gl, gg = jax.value_and_grad(lambda g: bce(disc(dp, gen(g)), 1.0))(gp)
            gp, mg, vg = adam(gp, gg, mg, vg, t)
            return gp, dp, mg, vg, md, vd, dl, gl

        zeros = lambda ps: [jnp.zeros_like(p) for p in ps]  # noqa: E731
        state = [gp, dp, zeros(gp), zeros(gp), zeros(dp), zeros(dp), 0]

        def step():
            state[6] += 1
            *rest, dl, gl = step_fn(*state[:6], state[6])
            state[:6] = rest
            return float(dl), float(gl)
        return step
    if name in ("W5_mlp", "W5_cnn"):
        params = [jnp.asarray(p) for p in s["params"]]
        fwd = jax.jit(mlp if name == "W5_mlp" else lenet)
        x = jnp.asarray(s["x"])
        return lambda: np.asarray(fwd(params, x))
    if name == "W6":
        x, a, b = jnp.asarray(s["x"]), float(s["a"]), float(s["b"])
        fn = jax.jit(lambda v: jax.nn.gelu(v * a + b, approximate=True))
        return lambda: np.asarray(fn(x).block_until_ready())
    if name == "W7":
        a, b = jnp.asarray(s["a"]), jnp.asarray(s["b"])
        fn = jax.jit(jnp.matmul)
        return lambda: np.asarray(fn(a, b).block_until_ready())
    raise KeyError(name)
