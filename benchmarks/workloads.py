"""The benchmark workloads W1-W9: shapes, seeded initial weights and data, and the numpy reference.

Every framework builds its step from the same `spec(name)`: identical initial
weights, identical data. The numpy implementations here (hand-written
backward passes) are both the "numpy" column and the oracle that every
framework's first losses are checked against before anything is timed. W8/W9
(a ResNet-18-style net) have no numpy column: PyTorch eager is their oracle.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32

# ---------------------------------------------------------------------------
# shared helpers


def _uniform(rng, fan_in, shape):
    bound = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-bound, bound, shape).astype(F32)


def _linear(rng, n_in, n_out):
    """PyTorch's nn.Linear initialisation, weights stored (in, out) so that y = x @ w + b."""
    return _uniform(rng, n_in, (n_in, n_out)), _uniform(rng, n_in, (n_out,))


def log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def cross_entropy(logits, labels):
    """Mean softmax cross-entropy and its gradient with respect to the logits."""
    lp = log_softmax(logits)
    n = logits.shape[0]
    loss = -lp[np.arange(n), labels].mean()
    g = np.exp(lp)
    g[np.arange(n), labels] -= 1
    return F32(loss), (g / n).astype(F32)


def sgd_momentum(params, grads, velocity, lr, momentum=0.9):
    for p, g, v in zip(params, grads, velocity):
        v *= momentum
        v += g
        p -= lr * v


# ---------------------------------------------------------------------------
# specs


MLP_SIZES = (784, 512, 512, 10)


def spec(name: str, seed: int = 0) -> dict:
    """Initial weights (float32, numpy) and data of a workload."""
    rng = np.random.default_rng(seed)
    if name in ("W1", "W5_mlp"):
        batch = 128 if name == "W1" else 1
        params = []
        for a, b in zip(MLP_SIZES[:-1], MLP_SIZES[1:]):
            params += _linear(rng, a, b)
        return dict(params=params, x=rng.standard_normal((batch, 784)).astype(F32),
                    y=rng.integers(0, 10, batch), lr=0.01)
    if name in ("W2", "W5_cnn"):
        batch = 64 if name == "W2" else 1
        c1 = _uniform(rng, 25, (6, 1, 5, 5)), _uniform(rng, 25, (6,))
        c2 = _uniform(rng, 150, (16, 6, 5, 5)), _uniform(rng, 150, (16,))
        params = [*c1, *c2, *_linear(rng, 400, 120), *_linear(rng, 120, 84), *_linear(rng, 84, 10)]
        return dict(params=params, x=rng.standard_normal((batch, 1, 28, 28)).astype(F32),
                    y=rng.integers(0, 10, batch), lr=0.01)
    if name == "W3":
        T, B, n_in, H = 32, 32, 64, 128
        params = [_uniform(rng, H, (n_in, 4 * H)), _uniform(rng, H, (H, 4 * H)), _uniform(rng, H, (4 * H,)),
                  *_linear(rng, H, 10)]
        return dict(params=params, x=rng.standard_normal((T, B, n_in)).astype(F32), y=rng.integers(0, 10, B),
                    lr=0.01, H=H)
    if name == "W4":
        g_params, d_params = [], []
        for a, b in zip((64, 256, 256), (256, 256, 784)):
            g_params += _linear(rng, a, b)
        for a, b in zip((784, 256, 256), (256, 256, 1)):
            d_params += _linear(rng, a, b)
        return dict(g_params=g_params, d_params=d_params, z=rng.standard_normal((64, 64)).astype(F32),
                    real=np.tanh(rng.standard_normal((64, 784))).astype(F32), lr=2e-4, betas=(0.5, 0.999),
                    eps=1e-8)
    if name in ("W8", "W9"):
        batch = 32 if name == "W8" else 1
        return dict(state=resnet_state(rng), x=rng.standard_normal((batch, 3, 32, 32)).astype(F32),
                    y=rng.integers(0, 10, batch), lr=0.01)
    if name == "W10":
        return dict(params=gpt_params(rng), x=rng.integers(0, GPT["vocab"], (GPT["batch"], GPT["seq"])),
                    y=rng.integers(0, GPT["vocab"], (GPT["batch"], GPT["seq"])), lr=0.01, heads=GPT["heads"])
    if name == "W11":
        return dict(state=decoder_state(rng), prompt=int(rng.integers(0, GPT["vocab"])), **DECODER)
    if name == "W6":
        return dict(x=rng.standard_normal(4 * 1024 * 1024).astype(F32), a=F32(1.5), b=F32(-0.25))
    if name == "W7":
        n = 1024
        return dict(a=rng.standard_normal((n, n)).astype(F32), b=rng.standard_normal((n, n)).astype(F32))
    raise KeyError(name)


# W10: one GPT-style block (pre-LayerNorm, causal self-attention, GELU(tanh) MLP) between a token + position
# embedding and a LayerNorm + linear head, trained with plain SGD on next-character cross-entropy
GPT = dict(batch=16, seq=256, width=256, heads=4, vocab=128)


def gpt_params(rng):
    """The block's weights by name, float32, weights stored (in, out) so that y = x @ w + b."""
    C, V, T = GPT["width"], GPT["vocab"], GPT["seq"]
    p = {"wte": 0.02 * rng.standard_normal((V, C)), "wpe": 0.02 * rng.standard_normal((T, C))}
    for ln in ("ln1", "ln2", "lnf"):
        p[f"{ln}.w"], p[f"{ln}.b"] = rng.uniform(0.8, 1.2, C), 0.05 * rng.standard_normal(C)
    p["attn.w_qkv"], p["attn.b_qkv"] = _linear(rng, C, 3 * C)
    p["attn.w_proj"], p["attn.b_proj"] = _linear(rng, C, C)
    p["mlp.w_fc"], p["mlp.b_fc"] = _linear(rng, C, 4 * C)
    p["mlp.w_proj"], p["mlp.b_proj"] = _linear(rng, 4 * C, C)
    p["head"] = _uniform(rng, C, (C, V))
    return {k: np.asarray(v, F32) for k, v in p.items()}


# W11: greedy generation at batch 1, one token per step, with a key/value cache: a decoder-only model of
# torch.nn.TransformerEncoderLayer blocks (norm_first, GELU), its state dict named as dlc.nn and torch.nn name it
DECODER = dict(layers=4, width=256, heads=4, vocab=128, context=256)


def decoder_state(rng):
    C, V, T = DECODER["width"], DECODER["vocab"], DECODER["context"]
    state = {"embed.weight": rng.standard_normal((V, C)), "position.weight": 0.02 * rng.standard_normal((T, C))}
    for i in range(DECODER["layers"]):
        b = f"blocks.{i}."
        state[b + "self_attn.in_proj_weight"] = _uniform(rng, C, (3 * C, C))
        state[b + "self_attn.in_proj_bias"] = _uniform(rng, C, (3 * C,))
        state[b + "self_attn.out_proj.weight"] = _uniform(rng, C, (C, C))
        state[b + "self_attn.out_proj.bias"] = _uniform(rng, C, (C,))
        state[b + "linear1.weight"] = _uniform(rng, C, (4 * C, C))
        state[b + "linear1.bias"] = _uniform(rng, C, (4 * C,))
        state[b + "linear2.weight"] = _uniform(rng, 4 * C, (C, 4 * C))
        state[b + "linear2.bias"] = _uniform(rng, 4 * C, (C,))
        for n in ("norm1", "norm2"):
            state[b + n + ".weight"], state[b + n + ".bias"] = rng.uniform(0.8, 1.2, C), 0.05 * rng.standard_normal(C)
    state["norm.weight"], state["norm.bias"] = rng.uniform(0.8, 1.2, C), 0.05 * rng.standard_normal(C)
    state["head.weight"], state["head.bias"] = _uniform(rng, C, (V, C)), _uniform(rng, C, (V,))
    return {k: np.asarray(v, F32) for k, v in state.items()}


# ResNet-18 for 3x32x32 inputs (the CIFAR variant: a 3x3 stem, no max pool): four stages of two basic
# blocks, (channels, stride of the stage's first block); a block whose shape changes gets a 1x1 conv + BN shortcut
RESNET_STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))
RESNET_BLOCKS = 2


def resnet_blocks():
    """(state-dict prefix, in channels, out channels, stride, has a downsample shortcut) of every basic block."""
    blocks, cin = [], 64
    for i, (cout, stride) in enumerate(RESNET_STAGES, start=1):
        for j in range(RESNET_BLOCKS):
            s = stride if j == 0 else 1
            blocks.append((f"layer{i}.{j}", cin, cout, s, s != 1 or cin != cout))
            cin = cout
    return blocks


def _bn_state(rng, prefix, c):
    # not PyTorch's (1, 0, 0, 1): seeded values make the eval path (W9) exercise every statistic
    return {f"{prefix}.weight": rng.uniform(0.5, 1.5, c).astype(F32),
            f"{prefix}.bias": (0.1 * rng.standard_normal(c)).astype(F32),
            f"{prefix}.running_mean": (0.1 * rng.standard_normal(c)).astype(F32),
            f"{prefix}.running_var": rng.uniform(0.5, 1.5, c).astype(F32)}


def resnet_state(rng):
    """Seeded weights of the ResNet-18-style net, by PyTorch state-dict name (convs without bias, fc (out, in))."""
    def conv(cout, cin, k):
        return _uniform(rng, cin * k * k, (cout, cin, k, k))

    state = {"conv1.weight": conv(64, 3, 3), **_bn_state(rng, "bn1", 64)}
    for prefix, cin, cout, _, down in resnet_blocks():
        state[f"{prefix}.conv1.weight"] = conv(cout, cin, 3)
        state.update(_bn_state(rng, f"{prefix}.bn1", cout))
        state[f"{prefix}.conv2.weight"] = conv(cout, cout, 3)
        state.update(_bn_state(rng, f"{prefix}.bn2", cout))
        if down:
            state[f"{prefix}.downsample.0.weight"] = conv(cout, cin, 1)
            state.update(_bn_state(rng, f"{prefix}.downsample.1", cout))
    fc_w, fc_b = _linear(rng, 512, 10)
    state["fc.weight"], state["fc.bias"] = np.ascontiguousarray(fc_w.T), fc_b
    return state


# ---------------------------------------------------------------------------
# numpy implementations: make(spec) -> step(); step() returns the loss (or output)


def numpy_mlp_step(s):
    params = [p.copy() for p in s["params"]]
    vel = [np.zeros_like(p) for p in params]
    x, y, lr = s["x"], s["y"], s["lr"]

    def step():
        acts = [x]
        h = x
        for i in range(0, len(params) - 2, 2):
            h = np.maximum(h @ params[i] + params[i + 1], 0)
            acts.append(h)
        logits = h @ params[-2] + params[-1]
        loss, g = cross_entropy(logits, y)
        grads = [None] * len(params)
        for i in range(len(params) - 2, -1, -2):
            a = acts[i // 2]
            grads[i], grads[i + 1] = a.T @ g, g.sum(0)
            if i:
                g = (g @ params[i].T) * (a > 0)
        sgd_momentum(params, grads, vel, lr)
        return loss
    return step


def mlp_forward(params, x):
    h = x
    for i in range(0, len(params) - 2, 2):
        h = np.maximum(h @ params[i] + params[i + 1], 0)
    return h @ params[-2] + params[-1]


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(F32(0.7978845608028654) * (x + F32(0.044715) * x * x * x)))


def numpy_w6(s):
    x, a, b = s["x"], s["a"], s["b"]
    return lambda: gelu_tanh(x * a + b)


def numpy_w7(s):
    a, b = s["a"], s["b"]
    out = np.empty_like(a)
    return lambda: np.dot(a, b, out=out)


def _im2col(x, k, pad):
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = h + 2 * pad - k + 1, w + 2 * pad - k + 1
    s = xp.strides
    cols = np.lib.stride_tricks.as_strided(xp, (n, c, k, k, oh, ow), (s[0], s[1], s[2], s[3], s[2], s[3]))
    return cols.transpose(0, 4, 5, 1, 2, 3).reshape(n * oh * ow, c * k * k), oh, ow


def _col2im(cols, shape, k, pad, oh, ow):
    n, c, h, w = shape
    cols = cols.reshape(n, oh, ow, c, k, k)
    out = np.zeros((n, c, h + 2 * pad, w + 2 * pad), F32)
    for i in range(k):
        for j in range(k):
            out[:, :, i:i + oh, j:j + ow] += cols[:, :, :, :, i, j].transpose(0, 3, 1, 2)
    return out[:, :, pad:pad + h, pad:pad + w]


def _conv_fwd(x, w, b, pad):
    cols, oh, ow = _im2col(x, w.shape[2], pad)
    y = cols @ w.reshape(w.shape[0], -1).T + b
    return y.reshape(x.shape[0], oh, ow, -1).transpose(0, 3, 1, 2), cols


def _pool_fwd(x):
    n, c, h, w = x.shape
    r = x.reshape(n, c, h // 2, 2, w // 2, 2)
    y = r.max(axis=(3, 5))
    mask = r == y[:, :, :, None, :, None]
    return y, mask


def _pool_bwd(g, mask):
    # ties share the gradient evenly would differ from the frameworks; inputs are random, ties do not occur
    return (mask * g[:, :, :, None, :, None]).reshape(mask.shape[0], mask.shape[1], mask.shape[2] * 2, -1)


def lenet_forward(params, x, keep=False):
    c1w, c1b, c2w, c2b, f1w, f1b, f2w, f2b, f3w, f3b = params
    a1, cols1 = _conv_fwd(x, c1w, c1b, 2)
    r1 = np.maximum(a1, 0)
    p1, m1 = _pool_fwd(r1)
    a2, cols2 = _conv_fwd(p1, c2w, c2b, 0)
    r2 = np.maximum(a2, 0)
    p2, m2 = _pool_fwd(r2)
    flat = p2.reshape(x.shape[0], -1)
    h1 = np.maximum(flat @ f1w + f1b, 0)
    h2 = np.maximum(h1 @ f2w + f2b, 0)
    logits = h2 @ f3w + f3b
    if keep:
        return logits, (cols1, r1, m1, p1, cols2, r2, m2, flat, h1, h2)
    return logits


def numpy_lenet_step(s):
    params = [p.copy() for p in s["params"]]
    vel = [np.zeros_like(p) for p in params]
    x, y, lr = s["x"], s["y"], s["lr"]

    def step():
        c1w, c1b, c2w, c2b, f1w, f1b, f2w, f2b, f3w, f3b = params
        logits, (cols1, r1, m1, p1, cols2, r2, m2, flat, h1, h2) = lenet_forward(params, x, keep=True)
        loss, g = cross_entropy(logits, y)
        g3w, g3b = h2.T @ g, g.sum(0)
        g = (g @ f3w.T) * (h2 > 0)
        g2w, g2b = h1.T @ g, g.sum(0)
        g = (g @ f2w.T) * (h1 > 0)
        g1w, g1b = flat.T @ g, g.sum(0)
        g = (g @ f1w.T).reshape(p1.shape[0], 16, 5, 5)
        g = _pool_bwd(g, m2) * (r2 > 0)
        gm = g.transpose(0, 2, 3, 1).reshape(-1, 16)
        gc2w, gc2b = (gm.T @ cols2).reshape(c2w.shape), gm.sum(0)
        g = _col2im(gm @ c2w.reshape(16, -1), p1.shape, 5, 0, 10, 10)
        g = _pool_bwd(g, m1) * (r1 > 0)
        gm = g.transpose(0, 2, 3, 1).reshape(-1, 6)
        gc1w, gc1b = (gm.T @ cols1).reshape(c1w.shape), gm.sum(0)
        sgd_momentum(params, [gc1w, gc1b, gc2w, gc2b, g1w, g1b, g2w, g2b, g3w, g3b], vel, lr)
        return loss
    return step


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def numpy_lstm_step(s):
    """LSTM (gates i, f, g, o as PyTorch) over T steps, linear head on the last hidden state."""
    params = [p.copy() for p in s["params"]]
    vel = [np.zeros_like(p) for p in params]
    x, y, lr, H = s["x"], s["y"], s["lr"], s["H"]
    T, B, _ = x.shape

    def step():
        wih, whh, b, hw, hb = params
        xp = (x.reshape(T * B, -1) @ wih).reshape(T, B, 4 * H) + b
        h, c = np.zeros((B, H), F32), np.zeros((B, H), F32)
        cache = []
        for t in range(T):
            z = xp[t] + h @ whh
            i, f, g, o = _sigmoid(z[:, :H]), _sigmoid(z[:, H:2 * H]), np.tanh(z[:, 2 * H:3 * H]), _sigmoid(z[:, 3 * H:])
            c_new = f * c + i * g
            tc = np.tanh(c_new)
            cache.append((h, c, i, f, g, o, tc))
            h, c = o * tc, c_new
        logits = h @ hw + hb
        loss, gl = cross_entropy(logits, y)
        ghw, ghb = h.T @ gl, gl.sum(0)
        dh, dc = gl @ hw.T, np.zeros((B, H), F32)
        gwhh, gz_all = np.zeros_like(whh), np.zeros((T, B, 4 * H), F32)
        for t in reversed(range(T)):
            h_prev, c_prev, i, f, g, o, tc = cache[t]
            do = dh * tc
            dc = dc + dh * o * (1 - tc * tc)
            di, df, dg = dc * g, dc * c_prev, dc * i
            dz = np.concatenate([di * i * (1 - i), df * f * (1 - f), dg * (1 - g * g), do * o * (1 - o)], axis=1)
            gz_all[t] = dz
            gwhh += h_prev.T @ dz
            dh = dz @ whh.T
            dc = dc * f
        gz = gz_all.reshape(T * B, -1)
        gwih, gb = x.reshape(T * B, -1).T @ gz, gz.sum(0)
        sgd_momentum(params, [gwih, gwhh, gb, ghw, ghb], vel, lr)
        return loss
    return step


def _bce_logits(z, target):
    """Mean binary cross-entropy with logits and its gradient."""
    loss = np.maximum(z, 0) - z * target + np.log1p(np.exp(-np.abs(z)))
    return F32(loss.mean()), ((_sigmoid(z) - target) / z.size).astype(F32)


def _mlp_fwd(params, x, hidden, out):
    acts, h = [x], x
    for i in range(0, len(params) - 2, 2):
        pre = h @ params[i] + params[i + 1]
        h = hidden(pre)
        acts.append((pre, h))
    z = h @ params[-2] + params[-1]
    return out(z), acts, z


def _mlp_bwd(params, acts, g, dhidden):
    grads = [None] * len(params)
    for i in range(len(params) - 2, -1, -2):
        a = acts[i // 2] if i == 0 else acts[i // 2][1]
        grads[i], grads[i + 1] = a.T @ g, g.sum(0)
        g = g @ params[i].T
        if i:
            g = g * dhidden(acts[i // 2][0])
    return grads, g


def _leaky(x):
    return np.where(x > 0, x, F32(0.2) * x)


def _dleaky(x):
    return np.where(x > 0, F32(1), F32(0.2))


class _Adam:
    def __init__(self, params, lr, betas, eps):
        self.params, self.lr, self.b1, self.b2, self.eps = params, lr, *betas, eps
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.t = 0

    def step(self, grads):
        self.t += 1
        c1, c2 = 1 - self.b1 ** self.t, 1 - self.b2 ** self.t
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m *= self.b1
            m += (1 - self.b1) * g
            v *= self.b2
            v += (1 - self.b2) * g * g
            p -= (self.lr * (m / c1) / (np.sqrt(v / c2) + self.eps)).astype(F32)


def numpy_gan_step(s):
    """One discriminator step (real vs G(z)) then one generator step, Adam for both; returns (d_loss, g_loss)."""
    gp = [p.copy() for p in s["g_params"]]
    dp = [p.copy() for p in s["d_params"]]
    z, real = s["z"], s["real"]
    opt_g, opt_d = _Adam(gp, s["lr"], s["betas"], s["eps"]), _Adam(dp, s["lr"], s["betas"], s["eps"])
    relu, drelu = (lambda a: np.maximum(a, 0)), (lambda a: (a > 0).astype(F32))
    ident = lambda a: a  # noqa: E731
    n = z.shape[0]

    def step():
        fake, g_acts, _ = _mlp_fwd(gp, z, relu, np.tanh)
        both = np.concatenate([real, fake])
        target = np.concatenate([np.ones((n, 1), F32), np.zeros((n, 1), F32)])
        logit, d_acts, _ = _mlp_fwd(dp, both, _leaky, ident)
        d_loss, gz = _bce_logits(logit, target)
        d_grads, _ = _mlp_bwd(dp, d_acts, gz * 2, _dleaky)  # mean over real and fake halves, each weighted 1
        opt_d.step(d_grads)
        fake, g_acts, _ = _mlp_fwd(gp, z, relu, np.tanh)
        logit, d_acts, _ = _mlp_fwd(dp, fake, _leaky, ident)
        g_loss, gz = _bce_logits(logit, np.ones((n, 1), F32))
        _, gx = _mlp_bwd(dp, d_acts, gz, _dleaky)
        g_grads, _ = _mlp_bwd(gp, g_acts, gx * (1 - fake * fake), drelu)
        opt_g.step(g_grads)
        return F32(d_loss * 2), g_loss
    return step


def numpy_step(name, s):
    """The numpy column: a callable running one step (or one inference / kernel call)."""
    if name == "W1":
        return numpy_mlp_step(s)
    if name == "W2":
        return numpy_lenet_step(s)
    if name == "W3":
        return numpy_lstm_step(s)
    if name == "W4":
        return numpy_gan_step(s)
    if name == "W5_mlp":
        return lambda: mlp_forward(s["params"], s["x"])
    if name == "W5_cnn":
        return lambda: lenet_forward(s["params"], s["x"])
    if name == "W6":
        return numpy_w6(s)
    if name == "W7":
        return numpy_w7(s)
    raise KeyError(f"{name} has no numpy implementation")


HAS_NUMPY = ("W1", "W2", "W3", "W4", "W5_mlp", "W5_cnn", "W6", "W7")
