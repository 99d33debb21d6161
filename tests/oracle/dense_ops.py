"""PyTorch oracle for the dense ops (tests/cpp/test_ops_dense.cpp).

usage: dense_ops.py OP SEED OUT.safetensors
OP: linear | embedding | rmsnorm | rope | attention | attention_bf16_kv | cross_entropy | adamw

Draws fresh random inputs (and random upstream gradients) from SEED, rounds every input to fp32 so
that dsmoe and the reference see the same numbers, computes forward and backward with autograd in
float64 and writes inputs (F32 / I32) and reference results (F64). An op may hold several cases,
named "c<k>.<tensor>"; metadata "cases" gives their count and "c<k>.<field>" their sizes/scalars.
"""
import math
import sys

import torch

from st import save

F64 = torch.float64


def main():
    op, seed, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        # fp32-representable float64 values
        return (torch.randn(*shape, generator=gen, dtype=F64) * scale).float().to(F64)

    def randint(lo, hi, shape):
        return torch.randint(lo, hi, shape, generator=gen, dtype=torch.int64)

    def f32(x):  # a Python scalar rounded to fp32, as the C++ side will hold it
        return float(torch.tensor(x, dtype=torch.float32).item())

    tensors, meta = {}, {}

    def put(case, name, t, dtype=None):
        t = t.detach()
        if dtype is not None:
            t = t.to(dtype)
        tensors[f"c{case}.{name}"] = t.contiguous()

    def leaf(t):
        return t.clone().requires_grad_(True)

    cases = []
    if op == "linear":
        # odd sizes; the second one is large enough for OpenBLAS to block over K (> 256)
        for c, (n, i, o) in enumerate([(37, 67, 29), (130, 300, 75)]):
            x, w, dy = leaf(randn(n, i)), leaf(randn(o, i)), randn(n, o)
            y = x @ w.t()
            y.backward(dy)
            put(c, "x", x, torch.float32); put(c, "w", w, torch.float32); put(c, "dy", dy, torch.float32)
            put(c, "y", y); put(c, "dx", x.grad); put(c, "dw", w.grad)
            cases.append(dict(n=n, in_=i, out=o))
    elif op == "embedding":
        for c, (vocab, dim, n) in enumerate([(53, 37, 41), (11, 130, 70)]):
            table = leaf(randn(vocab, dim))
            ids = randint(0, vocab, (n,))
            ids[5] = ids[0]; ids[n - 1] = ids[0]; ids[7] = ids[3]  # guaranteed repeats
            dout = randn(n, dim)
            y = table[ids]
            y.backward(dout)
            put(c, "table", table, torch.float32); put(c, "ids", ids, torch.int32)
            put(c, "dout", dout, torch.float32); put(c, "out", y); put(c, "dtable", table.grad)
            cases.append(dict(n=n, dim=dim, vocab=vocab))
    elif op == "rmsnorm":
        eps = f32(1e-6)
        for c, (n, dim) in enumerate([(23, 77), (9, 300)]):
            # rows of very different scales (rstd matters), weights around 1
            x = leaf((randn(n, dim) * torch.exp(randn(n, 1) * 1.5)).float().to(F64))
            w = leaf((randn(dim, scale=0.2) + 1.0).float().to(F64))
            dy = randn(n, dim)
            rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
            y = w * (x * rstd)
            y.backward(dy)
            put(c, "x", x, torch.float32); put(c, "w", w, torch.float32); put(c, "dy", dy, torch.float32)
            put(c, "y", y); put(c, "rstd", rstd.reshape(n)); put(c, "dx", x.grad); put(c, "dw", w.grad)
            cases.append(dict(n=n, dim=dim, eps=repr(eps)))
    elif op == "rope":
        theta, max_pos = 10000.0, 4096
        for c, (n, heads, hd) in enumerate([(29, 5, 18), (40, 3, 64)]):
            x = leaf(randn(n, heads, hd))
            pos = randint(0, max_pos, (n,)) if c == 0 else torch.arange(n)
            pos[0] = max_pos - 1
            half = hd // 2
            inv_freq = theta ** (-(torch.arange(0, hd, 2, dtype=F64) / hd))
            ang = pos.to(F64)[:, None] * inv_freq[None, :]          # [n, half]
            emb = torch.cat([ang, ang], dim=-1)[:, None, :]          # [n, 1, hd]
            cos, sin = emb.cos(), emb.sin()
            rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
            y = x * cos + rot * sin
            dy = randn(n, heads, hd)
            y.backward(dy)
            put(c, "x", x, torch.float32); put(c, "pos", pos, torch.int32); put(c, "dy", dy, torch.float32)
            put(c, "y", y); put(c, "dx", x.grad)
            put(c, "cos", cos[:, 0, :half]); put(c, "sin", sin[:, 0, :half])
            cases.append(dict(n=n, heads=heads, head_dim=hd, theta=repr(theta), max_pos=max_pos))
    elif op in ("attention", "attention_bf16_kv"):
        # attention_bf16_kv: the inference cache that stores keys and values as bf16. The test gets
        # the fp32 k, v and rounds them itself; the reference (forward only) attends over k, v
        # rounded by torch (round to nearest even) and gives those rounded values as k_bf16, v_bf16.
        bf16_kv = op == "attention_bf16_kv"
        shapes = [  # B, Tq, Tk, Hq, Hkv, D
            (2, 13, 13, 6, 2, 10),   # training, GQA
            (2, 5, 19, 6, 2, 12),    # q_len < kv_len, GQA
            (1, 1, 9, 4, 4, 8),      # one-token decode, MHA
            (1, 150, 150, 3, 1, 16), # several 64-row blocks, MQA
            (1, 70, 100, 2, 1, 9),   # q_len < kv_len across blocks
        ]
        if bf16_kv:  # the bf16 path widens 256 keys at a time: cross those chunks
            shapes += [
                (1, 1, 600, 4, 2, 16),   # one-token decode over three chunks, GQA
                (1, 3, 513, 2, 2, 32),   # a chunk of one key at the end
                (1, 70, 300, 2, 1, 9),   # prefill rows over two chunks
            ]
        for c, (B, Tq, Tk, Hq, Hkv, D) in enumerate(shapes):
            q = leaf(randn(B, Tq, Hq * D))
            k = leaf(randn(B, Tk, Hkv * D))
            v = leaf(randn(B, Tk, Hkv * D))
            dout = randn(B, Tq, Hq * D)
            g = Hq // Hkv
            ka, va = (k.detach().to(torch.bfloat16).to(F64), v.detach().to(torch.bfloat16).to(F64)) if bf16_kv else (k, v)
            q4 = q.view(B, Tq, Hq, D).transpose(1, 2)
            k4 = ka.view(B, Tk, Hkv, D).transpose(1, 2).repeat_interleave(g, dim=1)
            v4 = va.view(B, Tk, Hkv, D).transpose(1, 2).repeat_interleave(g, dim=1)
            s = (q4 @ k4.transpose(-1, -2)) / math.sqrt(D)
            i = torch.arange(Tq)[:, None]
            j = torch.arange(Tk)[None, :]
            s = s.masked_fill(j > i + (Tk - Tq), float("-inf"))
            p = torch.softmax(s, dim=-1)
            o = (p @ v4).transpose(1, 2).reshape(B, Tq, Hq * D)
            for name, t in (("q", q), ("k", k), ("v", v), ("dout", dout)):
                put(c, name, t, torch.float32)
            put(c, "out", o); put(c, "probs", p)
            if bf16_kv:
                put(c, "k_bf16", ka, torch.float32); put(c, "v_bf16", va, torch.float32)
            else:
                o.backward(dout)
                put(c, "dq", q.grad); put(c, "dk", k.grad); put(c, "dv", v.grad)
            cases.append(dict(batch=B, q_len=Tq, kv_len=Tk, q_heads=Hq, kv_heads=Hkv, head_dim=D))
    elif op == "cross_entropy":
        for c, (n, V) in enumerate([(37, 1031), (8, 50)]):
            # spread-out logits with large per-row offsets (tests the max shift)
            logits = leaf((randn(n, V, scale=3.0) + randn(n, 1, scale=10.0)).float().to(F64))
            t = randint(0, V, (n,))
            ign = torch.rand(n, generator=gen) < 0.25
            ign[1] = True
            ign[0] = False
            t[ign] = torch.tensor([-1, -100, -7])[randint(0, 3, (int(ign.sum()),))]
            counted = int((~ign).sum())
            scale = f32(1.0 / (counted * 2))  # mean over counted tokens, 2 accumulation steps
            lse = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(1, t.clamp(min=0)[:, None])[:, 0]
            losses = torch.where(ign, torch.zeros_like(lse), lse - picked)
            (losses.sum() * scale).backward()
            put(c, "logits", logits, torch.float32); put(c, "targets", t, torch.int32)
            put(c, "losses", losses); put(c, "dlogits", logits.grad)
            cases.append(dict(n=n, V=V, scale=repr(scale)))
    elif op == "adamw":
        n, steps = 1001, 3
        lr, b1, b2, eps, wd = f32(1e-2), f32(0.9), f32(0.95), f32(1e-8), f32(0.1)
        p0 = randn(n)
        grads = randn(steps, n) * torch.exp(randn(1, n))  # per-element gradient scales
        grads = grads.float().to(F64)
        grads[:, :5] = 0.0         # never-updated elements (m = v = 0)
        grads[1, 5:10] = 0.0       # a zero gradient in the middle
        p = p0.clone().requires_grad_(True)
        opt = torch.optim.AdamW([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
        for s in range(steps):
            p.grad = grads[s].clone()
            opt.step()
        st = opt.state[p]
        put(0, "p0", p0, torch.float32); put(0, "grads", grads, torch.float32)
        put(0, "p", p); put(0, "m", st["exp_avg"]); put(0, "v", st["exp_avg_sq"])
        cases.append(dict(n=n, steps=steps, lr=repr(lr), beta1=repr(b1), beta2=repr(b2), eps=repr(eps),
                          weight_decay=repr(wd)))
    else:
        sys.exit(f"dense_ops.py: unknown op {op!r}")

    meta["cases"] = len(cases)
    for c, d in enumerate(cases):
        for key, val in d.items():
            meta[f"c{c}.{key.rstrip('_')}"] = val
    save(out, tensors, meta)


if __name__ == "__main__":
    main()
