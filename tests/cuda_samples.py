"""Representative programs for checking the CUDA backend: built fresh, each with its own Store and data.

The CUDA tests render every one of them, compile the result with nvcc for
sm_80 and sm_90, run it in the CPU emulator against the reference executor,
and (on a machine with a GPU) run it on the device; the GPU benchmark times
the training steps. Each builder returns a Sample: what to hand dlc.compile
and the arguments of one call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

import dlc


@dataclass
class Sample:
    name: str
    outputs: list
    inputs: list
    args: list
    store: dlc.Store
    updates: dict = field(default_factory=dict)

    def compile(self, target: str, **options):
        return dlc.compile(self.outputs, inputs=self.inputs, updates=self.updates or None, target=target,
                           store=self.store, **options)

    def kernel_values_and_reference(self, **options) -> tuple[dict, dict]:
        """Compiled for cuda with `options`: every kernel output right after its kernel, and the reference's.

        Both dicts are keyed by the compiled program's node ids: each compiled function is bound to its
        own arguments (another compile of the same sample has other nodes).
        """
        from dlc.runtime.reference import evaluate

        fn = self.compile("cuda", **options)
        feeds, env, _ = fn.signature.bind(self.args, {})
        values = fn.backend.kernel_values(feeds, env)
        ref = evaluate(fn.backend.program.graph.nodes, feeds, self.store, env, keep=set(values))
        return values, ref


def _rng(seed=0):
    return np.random.default_rng(seed)


def elementwise_chain(batch: int = 7) -> Sample:
    """Broadcasting, transcendental functions, comparisons and index remaps (transpose, slice, pad, concat)."""
    rng, store = _rng(1), dlc.Store()
    x = dlc.input("x", ("B", 6, 5))
    y = dlc.input("y", (5,))
    s = dlc.param(rng.standard_normal((6, 1)).astype(np.float32), name="s", store=store)
    a = dlc.gelu(x * s + y) - dlc.sigmoid(x) * dlc.softplus(-x)
    b = dlc.where(x > 0.25, dlc.tanh(a), dlc.exp(-dlc.abs(a))) + dlc.clip(x, -0.5, 0.5) ** 2.0
    t = dlc.transpose(b, (0, 2, 1))                       # (B, 5, 6)
    p = dlc.pad(t[:, 1:4, ::2], ((0, 0), (1, 0), (0, 2)))  # (B, 4, 5)
    c = dlc.concat([p, dlc.leaky_relu(p, 0.1)], axis=1)   # (B, 8, 5)
    e = dlc.erf(c) + dlc.sqrt(dlc.abs(c) + 1.0) * dlc.sin(c) - dlc.cos(c)
    args = [rng.standard_normal((batch, 6, 5)).astype(np.float32), rng.standard_normal(5).astype(np.float32)]
    return Sample("elementwise_chain", [e, b], [x, y], args, store)


def reductions(batch: int = 9) -> Sample:
    """sum/prod/max/min/argmax/argmin over leading, trailing and several axes, mean over a symbolic dim."""
    rng, store = _rng(2), dlc.Store()
    x = dlc.input("x", ("B", 4, 33))
    outs = [dlc.sum(x, axis=2), dlc.max(x, axis=(0, 2), keepdims=True), dlc.min(x, axis=1), dlc.mean(x),
            dlc.prod(x[:, :, :3] * 0.5 + 1.0, axis=2), dlc.argmax(x, axis=2), dlc.argmin(x, axis=0),
            dlc.sum(dlc.cast(x > 0, "int64"), axis=(1, 2)), dlc.logsumexp(x, axis=1), dlc.var(x, axis=0)]
    return Sample("reductions", outs, [x], [rng.standard_normal((batch, 4, 33)).astype(np.float32)], store)


def matmul_epilogue(batch: int = 5) -> Sample:
    """2-D and batched matmul with broadcasting, transposed operands, bias + activation epilogues."""
    rng, store = _rng(3), dlc.Store()
    x = dlc.input("x", ("B", 37))
    w = dlc.param((rng.standard_normal((37, 45)) * 0.2).astype(np.float32), name="w", store=store)
    b = dlc.param(rng.standard_normal(45).astype(np.float32), name="b", store=store)
    q = dlc.input("q", (3, "B", 19))
    k = dlc.input("k", (3, 23, 19))
    h = dlc.relu(x @ w + b)
    att = dlc.matmul(q, dlc.transpose(k, (0, 2, 1)))        # (3, B, 23), B operand transposed
    g = dlc.matmul(dlc.transpose(h, (1, 0)), h)             # (45, 45), A operand transposed
    args = [rng.standard_normal((batch, 37)).astype(np.float32),
            rng.standard_normal((3, batch, 19)).astype(np.float32),
            rng.standard_normal((3, 23, 19)).astype(np.float32)]
    return Sample("matmul_epilogue", [h, dlc.tanh(att) * 2.0, g], [x, q, k], args, store)


def softmax_cross_entropy(batch: int = 11, classes: int = 10) -> Sample:
    """Softmax, log-softmax and the cross-entropy loss of integer labels, with its gradient."""
    rng, store = _rng(4), dlc.Store()
    logits = dlc.input("logits", ("B", classes))
    labels = dlc.input("labels", ("B",), "int64")
    loss = -dlc.mean(dlc.sum(dlc.log_softmax(logits) * dlc.one_hot(labels, classes), axis=1))
    (g,) = dlc.grad(loss, [logits])
    args = [rng.standard_normal((batch, classes)).astype(np.float32) * 3, rng.integers(0, classes, batch)]
    return Sample("softmax_cross_entropy", [loss, dlc.softmax(logits), g], [logits, labels], args, store)


def gather_scatter(batch: int = 6) -> Sample:
    """take (an embedding lookup) and its gradient, a scatter-add with repeated indices."""
    rng, store = _rng(5), dlc.Store()
    ids = dlc.input("ids", ("B", 3), "int64")
    table = dlc.param(rng.standard_normal((13, 8)).astype(np.float32), name="table", store=store)
    emb = dlc.take(table, ids, axis=0)                      # (B, 3, 8)
    loss = dlc.sum(dlc.tanh(emb) * emb)
    (g,) = dlc.grad(loss, [table])
    ids_value = rng.integers(0, 13, (batch, 3))
    ids_value[0, :] = 4  # repeated rows: the scatter must add, not overwrite
    return Sample("gather_scatter", [loss, g], [ids], [ids_value], store)


def random_numbers(batch: int = 5) -> Sample:
    """Philox uniform, normal and Bernoulli draws (float32 and float64) and dropout."""
    rng, store = _rng(6), dlc.Store()
    x = dlc.input("x", ("B", 12))
    step = dlc.input("step", (), "int64")
    outs = [dlc.random_uniform(x, seed=11, step=step, low=-2.0, high=3.0),
            dlc.random_normal((4, "B"), seed=12, step=step, mean=1.0, std=0.5, dtype="float64"),
            dlc.random_uniform((9,), seed=2 ** 40 + 3, step=step, dtype="float64"),
            dlc.random_normal((10,), seed=5, step=step),
            dlc.dropout(x, 0.4, seed=13, step=step)]
    return Sample("random_numbers", outs, [x, step], [rng.standard_normal((batch, 12)).astype(np.float32),
                                                       np.int64(3)], store)


def mlp_training_step(batch: int = 16, sizes=(20, 32, 24, 10), lr: float = 0.1) -> Sample:
    """A 3-layer perceptron's SGD step on softmax cross-entropy: returns the loss, updates the weights."""
    rng, store = _rng(7), dlc.Store()
    x = dlc.input("x", ("B", sizes[0]))
    labels = dlc.input("labels", ("B",), "int64")
    params, h = [], x
    for i, (m, n) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = dlc.param((rng.standard_normal((m, n)) * np.sqrt(2.0 / m)).astype(np.float32), name=f"w{i}", store=store)
        b = dlc.param(np.zeros(n, np.float32), name=f"b{i}", store=store)
        params += [w, b]
        h = h @ w + b
        if i < len(sizes) - 2:
            h = dlc.relu(h)
    loss = -dlc.mean(dlc.sum(dlc.log_softmax(h) * dlc.one_hot(labels, sizes[-1]), axis=1))
    grads = dlc.grad(loss, params)
    updates = {p: p - lr * g for p, g in zip(params, grads)}
    args = [rng.standard_normal((batch, sizes[0])).astype(np.float32), rng.integers(0, sizes[-1], batch)]
    return Sample("mlp_training_step", [loss], [x, labels], args, store, updates)


def cnn_training_step(batch: int = 4, lr: float = 0.05) -> Sample:
    """conv (bias + relu epilogue), max pool, grouped strided conv, avg pool, adaptive pool, linear; an SGD step."""
    rng, store = _rng(8), dlc.Store()
    x = dlc.input("x", ("B", 3, 12, 12))
    labels = dlc.input("labels", ("B",), "int64")

    def p(name, shape, scale):
        return dlc.param((rng.standard_normal(shape) * scale).astype(np.float32), name=name, store=store)

    w1, b1 = p("w1", (8, 3, 3, 3), 0.3), p("b1", (8,), 0.1)
    w2, b2 = p("w2", (6, 4, 3, 3), 0.2), p("b2", (6,), 0.1)
    w3, b3 = p("w3", (6 * 2 * 2, 5), 0.2), p("b3", (5,), 0.1)
    h = dlc.relu(dlc.conv2d(x, w1, b1, padding=1))                      # (B, 8, 12, 12)
    h = dlc.max_pool2d(h, 2)                                            # (B, 8, 6, 6)
    h = dlc.tanh(dlc.conv2d(h, w2, b2, stride=2, padding=1, groups=2))  # (B, 6, 3, 3)
    h = dlc.avg_pool2d(h, 3, stride=1, padding=1)                       # (B, 6, 3, 3)
    h = dlc.adaptive_avg_pool2d(h, (2, 2))                              # (B, 6, 2, 2), overlapping bins
    logits = dlc.reshape(h, ("B", 24)) @ w3 + b3
    loss = -dlc.mean(dlc.sum(dlc.log_softmax(logits) * dlc.one_hot(labels, 5), axis=1))
    params = [w1, b1, w2, b2, w3, b3]
    grads = dlc.grad(loss, params)
    updates = {q: q - lr * g for q, g in zip(params, grads)}
    args = [rng.standard_normal((batch, 3, 12, 12)).astype(np.float32), rng.integers(0, 5, batch)]
    return Sample("cnn_training_step", [loss], [x, labels], args, store, updates)


def rnn_training_step(batch: int = 3, steps: int = 5, hidden: int = 8, lr: float = 0.1) -> Sample:
    """A tanh RNN over a symbolic-length sequence (a scan; its gradient is a reverse scan) and an SGD step."""
    rng, store = _rng(10), dlc.Store()
    xs = dlc.input("xs", ("T", "B", 4))
    h0 = dlc.input("h0", ("B", hidden))
    target = dlc.input("target", ("B", 3))
    w = dlc.param((rng.standard_normal((4, hidden)) * 0.4).astype(np.float32), name="w", store=store)
    u = dlc.param((rng.standard_normal((hidden, hidden)) * 0.3).astype(np.float32), name="u", store=store)
    v = dlc.param((rng.standard_normal((hidden, 3)) * 0.3).astype(np.float32), name="v", store=store)

    def cell(h, x):
        h = dlc.tanh(x @ w + h @ u)
        return h, dlc.sum(h * h, axis=1)

    h_last, energies = dlc.scan(cell, h0, xs)
    loss = dlc.mean((h_last @ v - target) ** 2.0) + 0.01 * dlc.mean(energies)
    params = [w, u, v]
    grads = dlc.grad(loss, params)
    updates = {p: p - lr * g for p, g in zip(params, grads)}
    args = [rng.standard_normal((steps, batch, 4)).astype(np.float32),
            rng.standard_normal((batch, hidden)).astype(np.float32) * 0.1,
            rng.standard_normal((batch, 3)).astype(np.float32)]
    return Sample("rnn_training_step", [loss, energies], [xs, h0, target], args, store, updates)


def float64_and_integers(batch: int = 4) -> Sample:
    """float64 math and matmul, int64 floor division, bool logic, casts."""
    rng, store = _rng(9), dlc.Store()
    x = dlc.input("x", ("B", 6), "float64")
    n = dlc.input("n", ("B", 6), "int64")
    m = dlc.input("m", (6,), "int64")
    w = dlc.param(rng.standard_normal((6, 3)), name="w", store=store, dtype="float64")
    f = dlc.log(dlc.exp(x) + 1.0) @ w
    q = n / m + dlc.abs(n) - dlc.maximum(n, m)
    logic = dlc.logical_and(x > 0, dlc.logical_not(n > 2))
    args = [rng.standard_normal((batch, 6)), rng.integers(-20, 20, (batch, 6)), np.array([3, -4, 5, 7, -2, 1])]
    return Sample("float64_and_integers", [f, q, dlc.cast(logic, "float64") * x], [x, n, m], args, store)


def attention_step(batch: int = 2, length: int = 6, keys: int = 9) -> Sample:
    """Fused attention (causal with a boolean mask, and an additive mask) and its gradient ops, float32: over
    `keys` keys (attention_grad_q and attention_grad_kv), and self-attention of q (attention_grad)."""
    rng, store = _rng(10), dlc.Store()
    q = dlc.input("q", ("B", 2, length, 4))
    k = dlc.input("k", ("B", 2, keys, 4))
    v = dlc.input("v", ("B", 2, keys, 3))
    keep = rng.random((length, keys)) > 0.3
    keep[:, 0] = True
    y = dlc.scaled_dot_product_attention(q, k, v, mask=keep, causal=True)
    z = dlc.scaled_dot_product_attention(q, k, v, mask=rng.standard_normal((2, 1, keys)).astype(np.float32))
    s = dlc.scaled_dot_product_attention(q, q * 0.5, dlc.tanh(q), causal=True)
    gq, gk, gv = dlc.grad(dlc.sum(y * y) + dlc.sum(dlc.tanh(z)) + dlc.sum(s * s), [q, k, v])
    args = [rng.standard_normal((batch, 2, n, d)).astype(np.float32) for n, d in ((length, 4), (keys, 4), (keys, 3))]
    return Sample("attention_step", [y, z, s, gq, gk, gv], [q, k, v], args, store)


def multi_head_step(batch: int = 2, length: int = 5, heads: int = 2, width: int = 6) -> Sample:
    """A transformer's head split and merge around fused attention: q, k and v sliced out of one projection,
    reshaped to heads and transposed (the reshape an index remap inside each kernel), and their gradients
    merged back into the projection's layout (one kernel of three slices' gradients through reshapes)."""
    rng, store = _rng(12), dlc.Store()
    x = dlc.input("x", ("B", length, width))
    w = dlc.param((0.4 * rng.standard_normal((width, 3 * width))).astype(np.float32), name="w", store=store)
    b = dlc.param((0.1 * rng.standard_normal(3 * width)).astype(np.float32), name="b", store=store)
    d = width // heads
    q, k, v = (dlc.transpose(dlc.reshape(t, ("B", length, heads, d)), (0, 2, 1, 3))
               for t in dlc.split(x @ w + b, 3, axis=2))
    o = dlc.reshape(dlc.transpose(dlc.scaled_dot_product_attention(q, k, v, causal=True), (0, 2, 1, 3)),
                    ("B", length, width))
    gx, gw, gb = dlc.grad(dlc.sum(dlc.tanh(o) * x), [x, w, b])
    args = [rng.standard_normal((batch, length, width)).astype(np.float32)]
    return Sample("multi_head_step", [o, gx, gw, gb], [x], args, store)


def layer_norm_step(batch: int = 3, width: int = 40) -> Sample:
    """Fused layer normalization with its affine epilogue and its gradient op, float32."""
    rng, store = _rng(11), dlc.Store()
    x = dlc.input("x", ("B", 5, width))
    w = dlc.param(rng.uniform(0.5, 1.5, width), name="w", store=store)
    b = dlc.param(rng.standard_normal(width), name="b", store=store)
    y = dlc.layer_norm(x, width, w, b)
    (gx,) = dlc.grad(dlc.sum(dlc.tanh(y) * x), [x])
    args = [(rng.standard_normal((batch, 5, width)) * 2.0 + 1.0).astype(np.float32)]
    return Sample("layer_norm_step", [y, gx], [x], args, store)


SAMPLES = (elementwise_chain, reductions, matmul_epilogue, softmax_cross_entropy, gather_scatter, random_numbers,
           float64_and_integers, mlp_training_step, cnn_training_step, rnn_training_step, attention_step,
           multi_head_step, layer_norm_step)
