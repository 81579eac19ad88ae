"""dlc versions of the workloads, written in the DSL from the same numpy spec."""

from __future__ import annotations

import numpy as np

import dlc
from dlc import nn

TARGET = "cpu"


def setup_threads(n):
    pass  # NUMBA_NUM_THREADS and the BLAS thread variables are set by the runner before import


def version():
    return dlc.__version__


def _params(arrays, prefix):
    return [dlc.param(a, name=f"{prefix}{i}") for i, a in enumerate(arrays)]


def _mlp(params, x, hidden=dlc.relu, out=lambda z: z):
    h = x
    for i in range(0, len(params) - 2, 2):
        h = hidden(h @ params[i] + params[i + 1])
    return out(h @ params[-2] + params[-1])


def _ce(logits, labels, classes=10):
    return -dlc.mean(dlc.sum(dlc.log_softmax(logits) * dlc.one_hot(labels, classes), axis=1))


def _lenet(p, x):
    h = dlc.max_pool2d(dlc.relu(dlc.conv2d(x, p[0], p[1], padding=2)), 2)
    h = dlc.max_pool2d(dlc.relu(dlc.conv2d(h, p[2], p[3])), 2)
    h = dlc.flatten(h)
    h = dlc.relu(h @ p[4] + p[5])
    h = dlc.relu(h @ p[6] + p[7])
    return h @ p[8] + p[9]


def _lstm(p, x, H):
    wih, whh, b, hw, hb = p
    T, B = x.shape[0], x.shape[1]
    xp = dlc.reshape(dlc.reshape(x, (-1, x.shape[2])) @ wih, (T, B, 4 * H)) + b

    def cell(carry, xt):
        h, c = carry
        z = xt + h @ whh
        i, f, g, o = dlc.split(z, 4, axis=1)
        c = dlc.sigmoid(f) * c + dlc.sigmoid(i) * dlc.tanh(g)
        h = dlc.sigmoid(o) * dlc.tanh(c)
        return (h, c), h

    zeros = dlc.broadcast_to(dlc.constant(np.float32(0.0)), (B, H))  # B is symbolic
    (h, _), _ = dlc.scan(cell, (zeros, zeros), xp)
    return h @ hw + hb


def _sgd_momentum(loss, params, lr, momentum=0.9):
    grads = dlc.grad(loss, params)
    updates = {}
    for i, (p, g) in enumerate(zip(params, grads)):
        v = dlc.param(np.zeros(p.shape, np.float32), name=f"velocity{i}", trainable=False)
        v_new = momentum * v + g
        updates[v] = v_new
        updates[p] = p - lr * v_new
    return updates


def _adam(loss, params, lr, betas, eps, prefix):
    b1, b2 = betas
    grads = dlc.grad(loss, params)
    t = dlc.param(np.zeros((), np.float32), name=f"{prefix}t", trainable=False)
    t_new = t + 1.0
    c1 = 1.0 - dlc.pow(dlc.constant(np.float32(b1)), t_new)
    c2 = 1.0 - dlc.pow(dlc.constant(np.float32(b2)), t_new)
    updates = {t: t_new}
    for i, (p, g) in enumerate(zip(params, grads)):
        m = dlc.param(np.zeros(p.shape, np.float32), name=f"{prefix}m{i}", trainable=False)
        v = dlc.param(np.zeros(p.shape, np.float32), name=f"{prefix}v{i}", trainable=False)
        m_new = b1 * m + (1 - b1) * g
        v_new = b2 * v + (1 - b2) * g * g
        updates[m], updates[v] = m_new, v_new
        updates[p] = p - lr * (m_new / c1) / (dlc.sqrt(v_new / c2) + eps)
    return updates


def _bce_logits(z, target: float):
    return dlc.mean(dlc.relu(z) - z * target + dlc.softplus(-dlc.abs(z)))


class BasicBlock(nn.Module):
    """Two 3x3 conv + BatchNorm layers and a residual add (a 1x1 conv + BatchNorm shortcut when the shape changes)."""

    def __init__(self, cin, cout, stride, downsample):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
                           if downsample else None)

    def forward(self, x):
        h = dlc.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return dlc.relu(h + (self.downsample(x) if self.downsample is not None else x))


class ResNet18(nn.Module):
    """ResNet-18 for 3x32x32 inputs, with PyTorch's state-dict names (see workloads.resnet_blocks)."""

    def __init__(self, blocks, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        stages = {}
        for prefix, cin, cout, stride, down in blocks:
            stages.setdefault(prefix.split(".")[0], []).append(BasicBlock(cin, cout, stride, down))
        for name, layer in stages.items():
            setattr(self, name, nn.Sequential(*layer))
        self.stages = list(stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        h = dlc.relu(self.bn1(self.conv1(x)))
        for name in self.stages:
            h = getattr(self, name)(h)
        return self.fc(dlc.flatten(self.pool(h)))


def _resnet(s):
    import workloads

    model = ResNet18(workloads.resnet_blocks())
    model.load_state_dict(s["state"])
    return model


def _layer_norm(x, w, b, eps=1e-5):
    return dlc.layer_norm(x, x.shape[-1], w, b, eps)


def _gpt_loss(p, x, y, heads):
    """W10 as in torch_impl.gpt_loss: the attention is one fused op (dlc.scaled_dot_product_attention)."""
    B, T = x.shape
    C = p["wte"].shape[1]
    h = dlc.take(p["wte"], x, axis=0) + p["wpe"][:T]
    qkv = _layer_norm(h, p["ln1.w"], p["ln1.b"]) @ p["attn.w_qkv"] + p["attn.b_qkv"]
    q, k, v = (dlc.transpose(dlc.reshape(t, (B, T, heads, C // heads)), (0, 2, 1, 3))
               for t in dlc.split(qkv, 3, axis=2))
    o = dlc.reshape(dlc.transpose(dlc.scaled_dot_product_attention(q, k, v, causal=True), (0, 2, 1, 3)), (B, T, C))
    h = h + o @ p["attn.w_proj"] + p["attn.b_proj"]
    m = _layer_norm(h, p["ln2.w"], p["ln2.b"])
    h = h + dlc.gelu(m @ p["mlp.w_fc"] + p["mlp.b_fc"], approximate="tanh") @ p["mlp.w_proj"] + p["mlp.b_proj"]
    logits = _layer_norm(h, p["lnf.w"], p["lnf.b"]) @ p["head"]
    return _ce(dlc.reshape(logits, (B * T, -1)), dlc.reshape(y, (B * T,)), classes=p["head"].shape[1])


class _Decoder(nn.Module):
    """W11's model with torch.nn's names (workloads.decoder_state); `step` is one cached token."""

    def __init__(self, s):
        super().__init__()
        C = s["width"]
        self.embed = nn.Embedding(s["vocab"], C)
        self.position = nn.LearnedPositionalEncoding(s["context"], C)
        self.blocks = nn.ModuleList(nn.TransformerEncoderLayer(C, s["heads"], 4 * C, dropout=0.0, activation="gelu",
                                                               batch_first=True, norm_first=True)
                                    for _ in range(s["layers"]))
        self.norm = nn.LayerNorm(C)
        self.head = nn.Linear(C, s["vocab"])

    def step(self, ids, cache):
        x = dlc.expand_dims(self.embed(ids), 1) + cache.row(self.position.weight)
        for i, block in enumerate(self.blocks):
            x = nn.encoder_layer_step(block, x, cache, i)
        return self.head(self.norm(x))[:, 0]


def build_function(name, s, target=TARGET):
    """(callable running one step, the compiled dlc.Function(s) for statistics)."""
    dlc.reset_default_store()
    if name in ("W1", "W2", "W3"):
        params = _params(s["params"], "w")
        x = dlc.input("x", ("B",) + s["x"].shape[1:]) if name != "W3" else dlc.input("x", ("T", "B", s["x"].shape[2]))
        y = dlc.input("y", ("B",), "int64")
        logits = {"W1": lambda: _mlp(params, x), "W2": lambda: _lenet(params, x),
                  "W3": lambda: _lstm(params, x, s["H"])}[name]()
        loss = _ce(logits, y)
        fn = dlc.compile(loss, inputs=[x, y], updates=_sgd_momentum(loss, params, s["lr"]), target=target)
        xv, yv = s["x"], s["y"].astype(np.int64)
        return (lambda: float(fn(xv, yv))), [fn]
    if name == "W4":
        gp, dp = _params(s["g_params"], "g"), _params(s["d_params"], "d")
        z, real = dlc.input("z", ("B", 64)), dlc.input("real", ("B", 784))
        gen = lambda: _mlp(gp, z, dlc.relu, dlc.tanh)  # noqa: E731
        disc = lambda v: _mlp(dp, v, lambda a: dlc.leaky_relu(a, 0.2))  # noqa: E731
        d_loss = _bce_logits(disc(real), 1.0) + _bce_logits(disc(dlc.stop_gradient(gen())), 0.0)
        g_loss = _bce_logits(disc(gen()), 1.0)
        # both steps as one program: the generator step sees the discriminator's update, the generator's
        # forward pass (which the discriminator's step does not change) is computed once
        steps = dlc.compile_steps([(d_loss, _adam(d_loss, dp, s["lr"], s["betas"], s["eps"], "adam_d.")),
                                   (g_loss, _adam(g_loss, gp, s["lr"], s["betas"], s["eps"], "adam_g."))],
                                  inputs=[z, real], target=target)
        zv, rv = s["z"], s["real"]
        return (lambda: tuple(map(float, steps(zv, rv)))), [steps]
    if name == "W11":
        model = _Decoder(s)
        model.load_state_dict(s["state"])
        cache = nn.KVCache.for_layers(model.blocks, batch=1, max_len=s["context"])
        sampler = nn.compile_sampler(model.step, cache, temperature=0, target=target)
        state = {"token": np.array([s["prompt"]])}

        def step():
            if sampler.position == s["context"]:
                sampler.reset()
                state["token"] = np.array([s["prompt"]])
            state["token"] = sampler(state["token"])
            return int(state["token"][0])
        return step, [sampler.function]
    if name == "W10":
        params = {k: dlc.param(v, name=k) for k, v in s["params"].items()}
        x, y = dlc.input("x", s["x"].shape, "int64"), dlc.input("y", s["y"].shape, "int64")
        loss = _gpt_loss(params, x, y, s["heads"])
        grads = dlc.grad(loss, list(params.values()))
        fn = dlc.compile(loss, inputs=[x, y], updates={p: p - s["lr"] * g for p, g in zip(params.values(), grads)},
                         target=target)
        xv, yv = s["x"].astype(np.int64), s["y"].astype(np.int64)
        return (lambda: float(fn(xv, yv))), [fn]
    if name in ("W5_mlp", "W5_cnn"):
        params = _params(s["params"], "w")
        x = dlc.input("x", ("B",) + s["x"].shape[1:])
        out = _mlp(params, x) if name == "W5_mlp" else _lenet(params, x)
        fn = dlc.compile(out, inputs=[x], target=target)
        xv = s["x"]
        return (lambda: fn(xv)), [fn]
    if name == "W8":
        model = _resnet(s)
        x, y = dlc.input("x", ("B",) + s["x"].shape[1:]), dlc.input("y", ("B",), "int64")
        opt = dlc.optim.SGD(model.parameters(), lr=s["lr"], momentum=0.9)
        step = nn.compile_step(lambda x, y: nn.cross_entropy(model(x), y), [x, y], opt, modules=model,
                               target=target)
        xv, yv = s["x"], s["y"].astype(np.int64)
        return (lambda: step(xv, yv)), [step.function]
    if name == "W9":
        model = _resnet(s)
        x = dlc.input("x", ("B",) + s["x"].shape[1:])
        fn = nn.compile_eval(lambda x: model(x), [x], modules=model, target=target)
        xv = s["x"]
        return (lambda: fn(xv)), [fn]
    if name == "W6":
        x = dlc.input("x", ("N",))
        # elementwise only: its loop over numba's threads (parallel=True), as a user compiling such a function would
        fn = dlc.compile(dlc.gelu(x * float(s["a"]) + float(s["b"]), approximate="tanh"), target=target,
                         parallel=True)
        xv = s["x"]
        return (lambda: fn(xv)), [fn]
    if name == "W7":
        a, b = dlc.input("a", ("M", "K")), dlc.input("b", ("K", "N"))
        fn = dlc.compile(a @ b, target=target)
        av, bv = s["a"], s["b"]
        return (lambda: fn(av, bv)), [fn]
    raise KeyError(name)


def build(name, s, compiled=True):
    return build_function(name, s)[0]
