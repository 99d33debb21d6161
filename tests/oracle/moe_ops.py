"""PyTorch oracle for the MoE ops (swiglu, router, dispatch/experts/combine, capacity, balance losses,
hash routing). Usage: /usr/bin/python3 moe_ops.py <op> <seed> <out.safetensors>

Every op draws FRESH random inputs from <seed>, rounds them to fp32 (the values the C++ side reads),
and computes forward and backward in float64 with torch autograd, written the way the official
Hugging Face modeling_deepseek.py (MoEGate / DeepseekMoE training path) does it."""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from st import save  # noqa: E402

D64 = torch.float64


def f32(t):
    """Round to fp32 (what the C++ side gets), then compute in fp64."""
    return t.float().double()


def spread_logits(n, E, gen):
    """Logits with a gap >= 0.2 between any two entries of a row, so fp32 vs fp64 rounding can never
    change the top-k selection or order (softmax is monotonic)."""
    perm = torch.stack([torch.randperm(E, generator=gen) for _ in range(n)]).double()
    return f32((perm - E / 2) * 0.3 + 0.1 * torch.rand(n, E, generator=gen, dtype=D64))


# ---------------------------------------------------------------------------------------------- swiglu
def op_swiglu(gen):
    n, I = 37, 24
    gu = f32(2.0 * torch.randn(n, 2 * I, generator=gen, dtype=D64)).requires_grad_()
    dh = f32(torch.randn(n, I, generator=gen, dtype=D64))
    g, u = gu[:, :I], gu[:, I:]
    h = F.silu(g) * u
    h.backward(dh)
    return {"gu": gu, "dh": dh, "h": h, "dgu": gu.grad}


# ---------------------------------------------------------------------------------------------- router
def op_topk(gen):
    n, E, k = 64, 16, 5
    while True:  # random fp32 probabilities without ties inside a row
        probs = torch.softmax(torch.randn(n, E, generator=gen, dtype=D64), dim=-1).float()
        if all(len(torch.unique(r)) == E for r in probs):
            break
    vals, ids = torch.topk(probs, k, dim=-1, largest=True, sorted=True)
    return {"probs": probs, "ids": ids.int(), "vals": vals}


def router_chain(gen, norm):
    n, E, k = 48, 16, 4
    logits = spread_logits(n, E, gen).requires_grad_()
    dgates = f32(torch.randn(n, k, generator=gen, dtype=D64))
    dprobs_extra = f32(torch.randn(n, E, generator=gen, dtype=D64))  # e.g. from a balance loss
    # MoEGate.forward
    scores = logits.softmax(dim=-1)
    topk_weight, topk_idx = torch.topk(scores, k=k, dim=-1, sorted=True)
    vals = topk_weight
    if k > 1 and norm:
        denominator = topk_weight.sum(dim=-1, keepdim=True) + 1e-20
        topk_weight = topk_weight / denominator
    (topk_weight * dgates).sum().add_((scores * dprobs_extra).sum()).backward()
    return {"logits": logits, "dgates": dgates, "dprobs_extra": dprobs_extra, "probs": scores,
            "ids": topk_idx.int(), "vals": vals, "gates": topk_weight, "dlogits": logits.grad,
            "norm": torch.tensor([int(norm)], dtype=torch.int32)}


def op_router_norm(gen):
    return router_chain(gen, True)


def op_router_raw(gen):
    return router_chain(gen, False)


def hash_expert(token_id, E):
    h = token_id & 0xFFFFFFFF
    h ^= h >> 16
    h = (h * 0x7FEB352D) & 0xFFFFFFFF
    h ^= h >> 15
    h = (h * 0x846CA68B) & 0xFFFFFFFF
    h ^= h >> 16
    return h % E


def op_hash(gen):
    toks = torch.randint(-2**31, 2**31 - 1, (200,), generator=gen, dtype=torch.int64)
    toks = torch.cat([toks, torch.arange(0, 100), torch.tensor([-1, 2**31 - 1, -2**31])]).int()
    out = {"tokens": toks}
    for E in (1, 7, 63, 64):
        out[f"experts_{E}"] = torch.tensor([hash_expert(int(t), E) for t in toks], dtype=torch.int32)
    return out


# ------------------------------------------------------------------------------------ dispatch/experts
def capacity_reference(ids, scores, E, capacity):
    """Each expert keeps its `capacity` slots of highest score, ties by lower token (then slot) index."""
    n, k = ids.shape
    keep = torch.zeros(n * k, dtype=torch.uint8)
    for e in range(E):
        slots = [(-float(scores[t, j]), t, j) for t in range(n) for j in range(k) if int(ids[t, j]) == e]
        for _, t, j in sorted(slots)[:capacity]:
            keep[t * k + j] = 1
    return keep


def distinct_ids(n, k, allowed, gen):
    allowed = torch.tensor(allowed)
    return torch.stack([allowed[torch.randperm(len(allowed), generator=gen)[:k]] for _ in range(n)]).int()


def moe_composite(gen, capacity):
    n, H, I, E, k = 23, 32, 16, 8, 3
    empty = (0, 5, 7)  # experts that receive no token (first, middle, last)
    ids = distinct_ids(n, k, [e for e in range(E) if e not in empty], gen)
    x = f32(torch.randn(n, H, generator=gen, dtype=D64)).requires_grad_()
    gates = f32(0.1 + 0.9 * torch.rand(n, k, generator=gen, dtype=D64)).requires_grad_()
    w_gu = f32(torch.randn(E, 2 * I, H, generator=gen, dtype=D64) / H ** 0.5).requires_grad_()
    w_down = f32(torch.randn(E, H, I, generator=gen, dtype=D64) / I ** 0.5).requires_grad_()
    dy = f32(torch.randn(n, H, generator=gen, dtype=D64))
    out = {"x": x, "ids": ids, "gates": gates, "w_gu": w_gu, "w_down": w_down, "dy": dy}
    if capacity is not None:
        keep = capacity_reference(ids, gates.detach(), E, capacity)
        out["keep"] = keep
        out["capacity"] = torch.tensor([capacity], dtype=torch.int32)
        w = gates * keep.view(n, k).double()
    else:
        w = gates

    def expert(e, h):  # DeepseekMLP: down(silu(gate(h)) * up(h))
        gu = h @ w_gu[e].t()
        return (F.silu(gu[:, :I]) * gu[:, I:]) @ w_down[e].t()

    # DeepseekMoE.forward, training branch
    flat_topk_idx = ids.view(-1).long()
    hidden_states = x.repeat_interleave(k, dim=0)
    y = torch.empty_like(hidden_states)
    for e in range(E):
        y[flat_topk_idx == e] = expert(e, hidden_states[flat_topk_idx == e])
    y = (y.view(n, k, H) * w.unsqueeze(-1)).sum(dim=1)
    y.backward(dy)
    out.update({"y": y, "dx": x.grad, "dgates": gates.grad, "dw_gu": w_gu.grad, "dw_down": w_down.grad})
    return out


def op_moe(gen):
    return moe_composite(gen, None)


def op_moe_cap(gen):
    return moe_composite(gen, 12)


def op_capacity(gen):
    n, k, E, capacity = 40, 2, 6, 13
    ids = distinct_ids(n, k, list(range(E)), gen)
    scores = torch.randint(0, 5, (n, k), generator=gen).float() / 4  # many exact ties
    keep = capacity_reference(ids, scores, E, capacity)
    return {"ids": ids, "scores": scores, "keep": keep, "capacity": torch.tensor([capacity], dtype=torch.int32)}


# ------------------------------------------------------------------------------------- balance losses
def balance(gen, seq_aux):
    B, T, N, K, D = 3, 300, 8, 2, 4  # T > 256: the C++ chunked reduction is exercised
    alpha1, alpha2, dloss = 0.01, 0.05, 0.7
    logits = f32(torch.randn(B * T, N, generator=gen, dtype=D64))
    probs = f32(torch.softmax(logits, dim=-1))  # the fp32 probabilities the C++ side gets
    _, topk_idx = torch.topk(probs, K, dim=-1)

    def losses(scores):
        # MoEGate.forward, aux-loss part (scores_for_aux = scores, aux_topk = top_k)
        if seq_aux:
            scores_for_seq_aux = scores.view(B, T, -1)
            ce = torch.zeros(B, N, dtype=D64)
            ce.scatter_add_(1, topk_idx.view(B, -1), torch.ones(B, T * K, dtype=D64)).div_(T * K / N)
            P = scores_for_seq_aux.mean(dim=1)
            f = ce
        else:
            mask_ce = F.one_hot(topk_idx.view(-1), num_classes=N)
            ce = mask_ce.double().mean(0)
            P = scores.mean(0, keepdim=True)
            f = (ce * N).unsqueeze(0)
        exp_loss = (f * P).sum(dim=1).mean() * alpha1
        G = f.shape[0]
        fd = f.view(G, D, N // D).mean(-1)
        Pd = P.view(G, D, N // D).sum(-1)
        dev_loss = (fd * Pd).sum(dim=1).mean() * alpha2
        return f, exp_loss, dev_loss

    p1 = probs.clone().requires_grad_()
    f, exp_loss, _ = losses(p1)
    (exp_loss * dloss).backward()
    p2 = probs.clone().requires_grad_()
    _, _, dev_loss = losses(p2)
    (dev_loss * dloss).backward()
    return {"probs": probs, "ids": topk_idx.int(), "f": f, "loss_exp": exp_loss.reshape(1),
            "loss_dev": dev_loss.reshape(1), "dprobs_exp": p1.grad, "dprobs_dev": p2.grad,
            "shape": torch.tensor([B, T, N, K, D, int(seq_aux)], dtype=torch.int32),
            "scalars": torch.tensor([alpha1, alpha2, dloss], dtype=D64)}


def op_balance_seq(gen):
    return balance(gen, True)


def op_balance_all(gen):
    return balance(gen, False)


def main():
    op, seed, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    gen = torch.Generator().manual_seed(seed)
    fn = globals().get("op_" + op)
    if fn is None:
        sys.exit(f"moe_ops.py: unknown op '{op}'")
    save(path, {name: t.detach() for name, t in fn(gen).items()}, metadata={"op": op, "seed": seed})


if __name__ == "__main__":
    main()
