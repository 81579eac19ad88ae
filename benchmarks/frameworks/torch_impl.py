"""PyTorch eager and torch.compile versions of the workloads, from the same numpy spec.

Each in PyTorch's fastest idiomatic form: W3 eager runs torch.nn.LSTM (one
native kernel per layer). torch.compile does not trace nn.LSTM (dynamo's
allow_rnn is off by default: a graph break), so its W3 compiles the cell loop;
the eager cell loop is kept as an extra, labelled column (cell_loop=True).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _t(a, grad=True):
    return torch.tensor(np.asarray(a), requires_grad=grad)


def _mlp(params, x, hidden=F.relu, out=lambda z: z):
    h = x
    for i in range(0, len(params) - 2, 2):
        h = hidden(h @ params[i] + params[i + 1])
    return out(h @ params[-2] + params[-1])


def _lenet(p, x):
    h = F.max_pool2d(F.relu(F.conv2d(x, p[0], p[1], padding=2)), 2)
    h = F.max_pool2d(F.relu(F.conv2d(h, p[2], p[3])), 2)
    h = h.flatten(1)
    h = F.relu(h @ p[4] + p[5])
    h = F.relu(h @ p[6] + p[7])
    return h @ p[8] + p[9]


def _lstm_logits(p, x, H):
    wih, whh, b, hw, hb = p
    T, B, _ = x.shape
    xp = (x.reshape(T * B, -1) @ wih).reshape(T, B, 4 * H) + b
    h = torch.zeros(B, H)
    c = torch.zeros(B, H)
    for t in range(T):
        z = xp[t] + h @ whh
        i, f, g, o = z.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
    return h @ hw + hb


def _nn_lstm(s):
    """torch.nn.LSTM with the spec's weights; bias_hh stays zero and frozen (the spec has one bias per gate)."""
    wih, whh, b, hw, hb = s["params"]
    lstm = torch.nn.LSTM(wih.shape[0], s["H"])
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(torch.from_numpy(wih.T.copy()))
        lstm.weight_hh_l0.copy_(torch.from_numpy(whh.T.copy()))
        lstm.bias_ih_l0.copy_(torch.from_numpy(b))
        lstm.bias_hh_l0.zero_()
    lstm.bias_hh_l0.requires_grad_(False)
    head_w, head_b = _t(hw), _t(hb)
    params = [lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, head_w, head_b]
    return params, lambda x: lstm(x)[0][-1] @ head_w + head_b


class BasicBlock(torch.nn.Module):
    def __init__(self, cin, cout, stride, downsample):
        super().__init__()
        nn = torch.nn
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
                           if downsample else None)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return F.relu(h + (self.downsample(x) if self.downsample is not None else x))


class ResNet18(torch.nn.Module):
    """ResNet-18 for 3x32x32 inputs (see workloads.resnet_blocks)."""

    def __init__(self, blocks, classes=10):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(64)
        stages = {}
        for prefix, cin, cout, stride, down in blocks:
            stages.setdefault(prefix.split(".")[0], []).append(BasicBlock(cin, cout, stride, down))
        for name, layer in stages.items():
            self.add_module(name, torch.nn.Sequential(*layer))
        self.stages = list(stages)
        self.fc = torch.nn.Linear(512, classes)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        for name in self.stages:
            h = getattr(self, name)(h)
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


def resnet(s):
    """The ResNet-18-style model with the spec's weights and statistics."""
    import workloads

    model = ResNet18(workloads.resnet_blocks())
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in s["state"].items()},
                                                strict=False)
    if unexpected or any(not k.endswith("num_batches_tracked") for k in missing):
        raise ValueError(f"ResNet state does not match: missing {missing}, unexpected {unexpected}")
    return model


def gpt_loss(p, x, y, heads):
    """W10: embedding, one pre-LN block with causal F.scaled_dot_product_attention, LayerNorm, head, cross-entropy."""
    B, T = x.shape
    C = p["wte"].shape[1]
    h = p["wte"][x] + p["wpe"][:T]
    a = F.layer_norm(h, (C,), p["ln1.w"], p["ln1.b"])
    q, k, v = (a @ p["attn.w_qkv"] + p["attn.b_qkv"]).split(C, dim=2)
    q, k, v = (t.view(B, T, heads, C // heads).transpose(1, 2) for t in (q, k, v))
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
    h = h + o @ p["attn.w_proj"] + p["attn.b_proj"]
    m = F.layer_norm(h, (C,), p["ln2.w"], p["ln2.b"])
    h = h + F.gelu(m @ p["mlp.w_fc"] + p["mlp.b_fc"], approximate="tanh") @ p["mlp.w_proj"] + p["mlp.b_proj"]
    logits = F.layer_norm(h, (C,), p["lnf.w"], p["lnf.b"]) @ p["head"]
    return F.cross_entropy(logits.reshape(B * T, -1), y.reshape(B * T))


def greedy_decoder(s):
    """W11 in PyTorch eager: the usual key/value cache (preallocated per layer, row t written at step t) and
    F.scaled_dot_product_attention over rows 0..t; returns step() -> the next token, starting over when full."""
    P = {k: torch.from_numpy(v.copy()) for k, v in s["state"].items()}
    C, H, T, L = s["width"], s["heads"], s["context"], s["layers"]
    D = C // H
    keys = [torch.zeros(1, H, T, D) for _ in range(L)]
    values = [torch.zeros(1, H, T, D) for _ in range(L)]
    state = {"t": 0, "token": s["prompt"]}

    def heads(z):
        return z.view(1, 1, H, D).transpose(1, 2)

    @torch.no_grad()
    def step():
        if state["t"] == T:
            state["t"], state["token"] = 0, s["prompt"]
        t = state["t"]
        x = (P["embed.weight"][state["token"]] + P["position.weight"][t]).view(1, 1, C)
        for i in range(L):
            b = f"blocks.{i}."
            h = F.layer_norm(x, (C,), P[b + "norm1.weight"], P[b + "norm1.bias"])
            q, k, v = F.linear(h, P[b + "self_attn.in_proj_weight"], P[b + "self_attn.in_proj_bias"]).split(C, -1)
            keys[i][:, :, t] = heads(k)[:, :, 0]
            values[i][:, :, t] = heads(v)[:, :, 0]
            o = F.scaled_dot_product_attention(heads(q), keys[i][:, :, :t + 1], values[i][:, :, :t + 1])
            x = x + F.linear(o.transpose(1, 2).reshape(1, 1, C), P[b + "self_attn.out_proj.weight"],
                             P[b + "self_attn.out_proj.bias"])
            h = F.layer_norm(x, (C,), P[b + "norm2.weight"], P[b + "norm2.bias"])
            x = x + F.linear(F.gelu(F.linear(h, P[b + "linear1.weight"], P[b + "linear1.bias"])),
                             P[b + "linear2.weight"], P[b + "linear2.bias"])
        logits = F.linear(F.layer_norm(x, (C,), P["norm.weight"], P["norm.bias"]), P["head.weight"], P["head.bias"])
        state["t"], state["token"] = t + 1, int(logits[0, 0].argmax())
        return state["token"]
    return step


def build(name, s, compiled=False, cell_loop=False):
    """A zero-argument callable running one step; returns the loss (or the output)."""
    torch.manual_seed(0)
    maybe_compile = torch.compile if compiled else (lambda f: f)
    if name == "W11":
        if compiled:
            raise NotImplementedError("W11 runs in PyTorch eager only (a step's shapes change with the position)")
        return greedy_decoder(s)
    if name == "W10":
        p = {k: _t(v) for k, v in s["params"].items()}
        x, y = torch.tensor(s["x"]), torch.tensor(s["y"])
        opt = torch.optim.SGD(list(p.values()), lr=s["lr"])

        def train():
            opt.zero_grad(set_to_none=True)
            loss = gpt_loss(p, x, y, s["heads"])
            loss.backward()
            opt.step()
            return loss

        train = maybe_compile(train)
        return lambda: float(train().detach())
    if name == "W8":
        model = resnet(s).train()
        x, y = _t(s["x"], False), torch.tensor(s["y"])
        opt = torch.optim.SGD(model.parameters(), lr=s["lr"], momentum=0.9)
        model = maybe_compile(model)

        def train():
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss
        return lambda: float(train().detach())
    if name == "W9":
        model = maybe_compile(resnet(s).eval())
        x = _t(s["x"], False)

        def infer():
            with torch.no_grad():
                return model(x).numpy()
        return infer
    if name in ("W1", "W2", "W3"):
        params = [_t(p) for p in s["params"]]
        x, y = _t(s["x"], False), torch.tensor(s["y"])
        model = {"W1": lambda: _mlp(params, x), "W2": lambda: _lenet(params, x),
                 "W3": lambda: _lstm_logits(params, x, s["H"])}[name]
        if name == "W3" and not compiled and not cell_loop:
            params, lstm = _nn_lstm(s)
            model = lambda: lstm(x)  # noqa: E731
        opt = torch.optim.SGD(params, lr=s["lr"], momentum=0.9)

        def train():
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(), y)
            loss.backward()
            opt.step()
            return loss

        train = maybe_compile(train)
        return lambda: float(train().detach())
    if name == "W4":
        gp, dp = [_t(p) for p in s["g_params"]], [_t(p) for p in s["d_params"]]
        z, real = _t(s["z"], False), _t(s["real"], False)
        opt_g = torch.optim.Adam(gp, lr=s["lr"], betas=s["betas"], eps=s["eps"])
        opt_d = torch.optim.Adam(dp, lr=s["lr"], betas=s["betas"], eps=s["eps"])
        gen = lambda: _mlp(gp, z, F.relu, torch.tanh)  # noqa: E731
        disc = lambda v: _mlp(dp, v, lambda a: F.leaky_relu(a, 0.2))  # noqa: E731
        n = z.shape[0]
        ones, zeros = torch.ones(n, 1), torch.zeros(n, 1)

        def d_step():
            opt_d.zero_grad(set_to_none=True)
            fake = gen().detach()
            loss = F.binary_cross_entropy_with_logits(disc(real), ones) + \
                F.binary_cross_entropy_with_logits(disc(fake), zeros)
            loss.backward()
            opt_d.step()
            return loss

        def g_step():
            opt_g.zero_grad(set_to_none=True)
            loss = F.binary_cross_entropy_with_logits(disc(gen()), ones)
            loss.backward()
            opt_g.step()
            return loss

        d_step, g_step = maybe_compile(d_step), maybe_compile(g_step)
        return lambda: (float(d_step().detach()), float(g_step().detach()))
    if name in ("W5_mlp", "W5_cnn"):
        params = [_t(p, False) for p in s["params"]]
        x = _t(s["x"], False)
        fwd = maybe_compile(lambda inp: _mlp(params, inp) if name == "W5_mlp" else _lenet(params, inp))

        def infer():
            with torch.no_grad():
                return fwd(x).numpy()
        return infer
    if name == "W6":
        x = _t(s["x"], False)
        a, b = float(s["a"]), float(s["b"])
        fn = maybe_compile(lambda v: F.gelu(v * a + b, approximate="tanh"))
        return lambda: fn(x).numpy()
    if name == "W7":
        a, b = _t(s["a"], False), _t(s["b"], False)
        out = torch.empty_like(a)
        fn = maybe_compile(lambda: torch.matmul(a, b, out=out)) if not compiled else torch.compile(
            lambda: torch.matmul(a, b))
        return lambda: fn().numpy()
    raise KeyError(name)


def setup_threads(n):
    torch.set_num_threads(n)


def version():
    return torch.__version__
