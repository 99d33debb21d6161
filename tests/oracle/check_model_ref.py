"""Self-checks of the PyTorch reference model (tests/oracle/model_ref.py) and its oracle
(tests/oracle/model_oracle.py): every C++ "matches the oracle" test is only as good as the oracle, so
the oracle is checked against gradcheck, closed forms, naive loops and its own stored files.

  /usr/bin/python3 tests/oracle/check_model_ref.py [--fast] [--part analytic|gradcheck|files|all]

CTest runs the three parts as separate tests (tests/CMakeLists.txt: oracle_self_check.*), in --fast
mode: gradcheck then perturbs a fixed random sample of FAST_GRADCHECK_ELEMS elements of every picked
tensor (instead of all of them) in every model variant, so every tensor family, every variant and
the aux injection are still checked; everything else runs in full. Without --fast (by hand), every
element of the picked tensors. Exits non-zero when any check failed.
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from torch.nn.utils.stateless import functional_call

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import st  # noqa: E402
import model_oracle as mo  # noqa: E402
import model_ref  # noqa: E402
from model_ref import (DeepseekConfig, DeepseekForCausalLM, MoEGate, apply_rotary_pos_emb,  # noqa: E402
                       hash_u32)

torch.set_num_threads(1)
FAILS = []
# --fast: elements per picked tensor that gradcheck perturbs (None = all). A wrong gradient formula
# moves whole rows or columns of a gradient, so a sample of 6 per tensor catches it; the full run
# by hand stays the exhaustive check.
FAST_GRADCHECK_ELEMS = 6
GRADCHECK_ELEMS = None


def check(name, ok, detail=""):
    print(f"[{'PASS' if ok else 'FAIL'}] {name}" + (f"  ({detail})" if detail else ""))
    if not ok:
        FAILS.append(name)


TINY = {"vocab_size": 16, "hidden_size": 8, "intermediate_size": 12, "moe_intermediate_size": 4,
        "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
        "n_shared_experts": 1, "n_routed_experts": 4, "num_experts_per_tok": 2,
        "first_k_dense_replace": 1, "moe_layer_freq": 1, "norm_topk_prob": False, "seq_aux": True,
        "aux_loss_alpha": 0.1, "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "initializer_range": 0.3}

TINY_VARIANTS = {
    "tiny seq_aux, no norm": {},
    "tiny tok_aux, norm_topk": {"seq_aux": False, "norm_topk_prob": True},
    "tiny device aux (seq)": {"n_device_groups": 2, "device_aux_alpha": 0.2},
    "tiny device aux (tok)": {"n_device_groups": 2, "device_aux_alpha": 0.2, "seq_aux": False,
                              "aux_loss_alpha": 0.0},
    "tiny group-limited + comm aux (seq)": {"topk_method": "group_limited_greedy", "n_group": 2, "topk_group": 1,
                                            "n_device_groups": 2, "comm_aux_alpha": 0.3},
    "tiny device capacity + comm aux (tok, norm)": {"seq_aux": False, "norm_topk_prob": True, "n_device_groups": 2,
                                                    "capacity_factor": 0.6, "comm_aux_alpha": 0.2},
    "tiny switch top-1": {"num_experts_per_tok": 1, "n_shared_experts": None},
    "tiny hash": {"router_type": "hash", "num_experts_per_tok": 1, "n_shared_experts": None},
    "tiny dense": {"n_routed_experts": None},
}


def build(cfg_dict, seed):
    g = torch.Generator().manual_seed(seed)
    m = DeepseekForCausalLM(DeepseekConfig(cfg_dict)).double()
    mo.init_weights(m, g)
    m.train()
    return m, g


def min_margin(model):
    mm = float("inf")
    for _, m in model.moe_layers():
        if "margin" in m.gate.last:
            mm = min(mm, float(m.gate.last["margin"].min()))
    return mm


def total_objective(model, params, tokens):
    """lm + every aux loss, computed IN the graph (inject_aux off), as a function of `params`."""
    model.set_inject_aux(False)
    try:
        _, lm = functional_call(model, params, (tokens[:, :-1], tokens[:, 1:]))
        tot = lm
        for ea, da in model.aux_losses().values():
            if ea is not None:
                tot = tot + ea
            if da is not None:
                tot = tot + da
        for ca in model.comm_losses().values():
            if ca is not None:
                tot = tot + ca
        return tot
    finally:
        model.set_inject_aux(True)


# ----------------------------------------------------------------------------------------------
def check_gradcheck():
    for name, over in TINY_VARIANTS.items():
        cfg = dict(TINY, **over)
        # pick a seed whose routing is far from ties, so finite differences never flip a top-k choice
        for seed in range(100):
            model, g = build(cfg, seed)
            tokens = torch.randint(0, cfg["vocab_size"], (2, 7), generator=g)
            with torch.no_grad():
                model(tokens[:, :-1], tokens[:, 1:])
            if min_margin(model) > 2e-3:
                break
        names = [n for n, _ in model.named_parameters()]
        pick = [n for n in names if any(s in n for s in (
            "embed_tokens", "layers.1.self_attn.q_proj", "layers.1.self_attn.k_proj",
            "layers.0.mlp.down_proj", "layers.1.mlp.gate.weight", "layers.1.mlp.experts.0.gate_proj",
            "layers.1.mlp.experts.3.down_proj", "layers.1.mlp.shared_experts.up_proj",
            "layers.1.post_attention_layernorm", "layers.1.input_layernorm", "model.norm", "lm_head"))]
        base = {n: p.detach().clone() for n, p in model.named_parameters()}
        # The perturbed elements of each picked tensor: all of them, or a fixed random sample (--fast).
        sel = {}
        for n in pick:
            k = base[n].numel()
            sel[n] = (torch.arange(k) if GRADCHECK_ELEMS is None or GRADCHECK_ELEMS >= k
                      else torch.randperm(k, generator=torch.Generator().manual_seed(seed))[:GRADCHECK_ELEMS])
        inputs = tuple(base[n].reshape(-1)[sel[n]].clone().requires_grad_(True) for n in pick)

        def f(*xs):
            params = dict(base)
            for n, x in zip(pick, xs):
                params[n] = base[n].reshape(-1).index_put((sel[n],), x).view_as(base[n])
            return total_objective(model, params, tokens)

        t0 = time.time()
        ok = torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-5, raise_exception=False)
        check(f"gradcheck {name} (seed {seed}, {sum(x.numel() for x in inputs)} elems, "
              f"{time.time() - t0:.1f}s)", ok)

        # The official injection (AddAuxiliaryLoss, gradient 1, backward of the LM loss only) must give
        # exactly the gradient of lm + aux, and the oracle's forward_backward must use it.
        model.zero_grad(set_to_none=True)
        mo.forward_backward(model, tokens)
        g_inj = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        total_objective(model, dict(model.named_parameters()), tokens).backward()
        g_tot = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        same = g_inj.keys() == g_tot.keys() and all(
            torch.allclose(g_inj[n], g_tot[n], rtol=1e-12, atol=1e-15) for n in g_tot)
        check(f"  injected-aux grads == grads of (lm + aux) [{name}]", same)


# ----------------------------------------------------------------------------------------------
def check_uniform_identity():
    # N experts, top-K, T = N tokens per sequence whose router logits are the N cyclic shifts of one
    # vector: every expert is chosen exactly T*K/N times (f_i = 1) and the mean score is 1/N (P_i = 1/N).
    for seq_aux in (True, False):
        for (N, K, D) in ((4, 2, 2), (8, 3, 4), (6, 1, 3)):
            cfg = DeepseekConfig(dict(TINY, hidden_size=N, num_attention_heads=1, num_key_value_heads=1,
                                      n_routed_experts=N, num_experts_per_tok=K, seq_aux=seq_aux,
                                      aux_loss_alpha=0.37, n_device_groups=D, device_aux_alpha=0.21))
            gate = MoEGate(cfg).double().train()
            v = torch.linspace(-1.0, 1.3, N, dtype=torch.float64) ** 3
            with torch.no_grad():
                for t in range(N):
                    gate.weight[:, t] = torch.roll(v, t)
            x = torch.eye(N, dtype=torch.float64).unsqueeze(0).repeat(3, 1, 1)  # [B=3, T=N, h=N]
            _, _, aux, dev = gate(x)
            check(f"uniform routing: aux == alpha (seq_aux={seq_aux}, N={N}, K={K})",
                  abs(float(aux) - 0.37) < 1e-12, f"aux={float(aux):.15f}")
            check(f"uniform routing: device aux == a2 (seq_aux={seq_aux}, N={N}, D={D})",
                  abs(float(dev) - 0.21) < 1e-12, f"dev={float(dev):.15f}")


def check_aux_closed_form():
    # d L_ExpBal / d s_{i,t} = a1 * f_i / T per sequence, / B for the batch mean (seq_aux); over all B*T
    # tokens otherwise. Propagate through softmax and the linear router by hand, compare with autograd.
    g = torch.Generator().manual_seed(3)
    for seq_aux in (True, False):
        N, K, B, T, H = 6, 2, 3, 5, 7
        cfg = DeepseekConfig(dict(TINY, hidden_size=H, num_attention_heads=1, num_key_value_heads=1,
                                  n_routed_experts=N, num_experts_per_tok=K, seq_aux=seq_aux,
                                  aux_loss_alpha=0.3, n_device_groups=2, device_aux_alpha=0.5))
        gate = MoEGate(cfg).double().train()
        with torch.no_grad():
            gate.weight.copy_(torch.randn(N, H, generator=g, dtype=torch.float64))
        x = torch.randn(B, T, H, generator=g, dtype=torch.float64)
        idx, _, aux, dev = gate(x)
        for which, loss, alpha in (("expert", aux, 0.3), ("device", dev, 0.5)):
            gate.weight.grad = None
            loss.backward(retain_graph=True)
            s = torch.softmax(x.view(-1, H) @ gate.weight.detach().T, -1).view(B, T, N)
            cnt = torch.zeros(B, N, dtype=torch.float64)
            cnt.scatter_add_(1, idx.view(B, -1), torch.ones(B, T * K, dtype=torch.float64))
            if not seq_aux:
                cnt = cnt.sum(0, keepdim=True).expand(B, N)
                f = cnt * N / (B * T * K)
                scale = 1.0 / (B * T)
            else:
                f = cnt * N / (T * K)
                scale = 1.0 / (B * T)
            if which == "device":  # d/dP_j of sum_d f'_d P'_d = f'_{d(j)}
                f = f.view(B, 2, N // 2).mean(-1, keepdim=True).expand(B, 2, N // 2).reshape(B, N)
            dLds = (alpha * f * scale).unsqueeze(1).expand(B, T, N)
            dLdl = s * (dLds - (s * dLds).sum(-1, keepdim=True))
            dW = dLdl.reshape(-1, N).T @ x.view(-1, H)
            check(f"{which} aux closed-form gradient (seq_aux={seq_aux})",
                  torch.allclose(gate.weight.grad, dW, rtol=1e-10, atol=1e-14),
                  f"max err {float((gate.weight.grad - dW).abs().max()):.2e}")
            # and the value from the definitions
            P = s.mean(1) if seq_aux else s.reshape(-1, N).mean(0, keepdim=True).expand(B, N)
            f0 = cnt * N / (T * K) if seq_aux else cnt * N / (B * T * K)
            if which == "expert":
                want = alpha * (f0 * P).sum(-1).mean()
            else:
                want = alpha * (f0.view(B, 2, -1).mean(-1) * P.view(B, 2, -1).sum(-1)).sum(-1).mean()
            check(f"{which} aux value from the definition (seq_aux={seq_aux})",
                  abs(float(loss) - float(want)) < 1e-14, f"{float(loss):.15f} vs {float(want):.15f}")


# ----------------------------------------------------------------------------------------------
def naive_attention(attn, x):
    """Loops over batch, heads and positions: explicit half-split RoPE and kv head = h // (H/Hkv)."""
    B, T, _ = x.shape
    H, Hkv, D = attn.num_heads, attn.num_key_value_heads, attn.head_dim
    q = (x @ attn.q_proj.weight.T).view(B, T, H, D)
    k = (x @ attn.k_proj.weight.T).view(B, T, Hkv, D)
    v = (x @ attn.v_proj.weight.T).view(B, T, Hkv, D)
    theta = attn.rotary_emb.base

    def rope(vec, pos):
        out = vec.clone()
        half = D // 2
        for i in range(half):
            ang = pos * theta ** (-2.0 * i / D)
            c, s = math.cos(ang), math.sin(ang)
            out[i] = vec[i] * c - vec[i + half] * s
            out[i + half] = vec[i + half] * c + vec[i] * s
        return out

    o = torch.zeros(B, T, H, D, dtype=x.dtype)
    for b in range(B):
        for h in range(H):
            kvh = h // (H // Hkv)
            ks = [rope(k[b, j, kvh], j) for j in range(T)]
            for t in range(T):
                qt = rope(q[b, t, h], t)
                sc = torch.stack([qt @ ks[j] for j in range(t + 1)]) / math.sqrt(D)
                w = torch.softmax(sc, 0)
                o[b, t, h] = sum(w[j] * v[b, j, kvh] for j in range(t + 1))
    return o.reshape(B, T, H * D) @ attn.o_proj.weight.T


def check_attention_and_rope():
    for kv in (1, 2, 4):
        cfg = dict(TINY, hidden_size=16, num_attention_heads=4, num_key_value_heads=kv, rope_theta=500.0)
        model, g = build(cfg, 1)
        attn = model.model.layers[0].self_attn
        x = torch.randn(2, 6, 16, generator=g, dtype=torch.float64)
        pos = torch.arange(6).unsqueeze(0).expand(2, 6)
        with torch.no_grad():
            got = attn(x, pos)
            want = naive_attention(attn, x)
        check(f"attention == naive loop (heads 4, kv heads {kv}, half-split RoPE)",
              torch.allclose(got, want, rtol=1e-11, atol=1e-13), f"max err {float((got - want).abs().max()):.1e}")
    # relative-position property: <R_m q, R_n k> depends only on m - n
    rot = model.model.layers[0].self_attn.rotary_emb
    D = rot.dim
    cos, sin = rot(40, torch.float64)
    q = torch.randn(1, 1, 1, D, dtype=torch.float64)
    k = torch.randn(1, 1, 1, D, dtype=torch.float64)
    dots = []
    for m, n in ((5, 2), (13, 10), (39, 36)):
        qm, _ = apply_rotary_pos_emb(q, q, cos, sin, torch.tensor([[m]]))
        kn, _ = apply_rotary_pos_emb(k, k, cos, sin, torch.tensor([[n]]))
        dots.append(float((qm * kn).sum()))
    check("RoPE relative-position property", max(dots) - min(dots) < 1e-12, str(dots))


def check_dispatch_parity():
    for name, over in TINY_VARIANTS.items():
        if over.get("n_routed_experts", 1) is None:
            continue
        # A capacity drops slots in training only (never at evaluation): the two forwards then differ
        # by design, so the dispatch paths are compared dropless.
        cfg = dict(TINY, **over)
        cfg.update(hidden_size=16, n_routed_experts=8, capacity_factor=0.0)
        model, g = build(cfg, 5)
        tokens = torch.randint(0, 16, (3, 9), generator=g)
        with torch.no_grad():
            lt, _ = model(tokens[:, :-1])
            model.eval()
            le, _ = model(tokens[:, :-1])
            model.train()
        check(f"train dispatch == inference dispatch [{name}]", torch.allclose(lt, le, rtol=1e-12, atol=1e-13),
              f"max err {float((lt - le).abs().max()):.1e}")
    # and the MoE layer against a per-token loop (softmax, top-k by original expert id, gates)
    cfg = DeepseekConfig(dict(TINY, hidden_size=16, n_routed_experts=8, num_experts_per_tok=3, norm_topk_prob=True))
    model, g = build(cfg.raw, 9)
    moe = model.model.layers[1].mlp
    x = torch.randn(2, 5, 16, generator=g, dtype=torch.float64)
    with torch.no_grad():
        got = moe(x, None)
        want = torch.zeros_like(x)
        for b in range(2):
            for t in range(5):
                u = x[b, t]
                s = torch.softmax(moe.gate.weight @ u, 0)
                order = sorted(range(8), key=lambda i: -float(s[i]))[:3]
                den = sum(float(s[i]) for i in order) + 1e-20
                y = sum(float(s[i]) / den * moe.experts[i](u) for i in order)
                want[b, t] = y + moe.shared_experts(u)
    check("MoE layer == per-token loop (top-3 of 8, norm_topk_prob, shared)",
          torch.allclose(got, want, rtol=1e-12, atol=1e-14))


def check_routing_override():
    """The evaluation-only override (model_ref.set_routing_override) against a per-token loop written
    from the paper's description: rank the softmax scores, skip the top `disable_top`, run the next k,
    gates = their softmax scores (renormalised over the k when norm_topk_prob and k > 1)."""
    for norm in (False, True):
        cfg = DeepseekConfig(dict(TINY, hidden_size=16, n_routed_experts=8, num_experts_per_tok=3,
                                  norm_topk_prob=norm))
        model, g = build(cfg.raw, 11)
        model.eval()
        moe = model.model.layers[1].mlp
        x = torch.randn(2, 5, 16, generator=g, dtype=torch.float64)
        for d, k, drop in [(1, 0, False), (2, 0, False), (0, 1, False), (0, 4, True), (2, 2, True), (5, 3, False)]:
            model.set_routing_override(d, k, drop)
            kk = k or 3
            with torch.no_grad():
                got = moe(x, None)
                want = torch.zeros_like(x)
                for b in range(2):
                    for t in range(5):
                        u = x[b, t]
                        s = torch.softmax(moe.gate.weight @ u, 0)
                        order = sorted(range(8), key=lambda i: -float(s[i]))[d:d + kk]
                        den = sum(float(s[i]) for i in order) + 1e-20 if norm and kk > 1 else 1.0
                        y = sum(float(s[i]) / den * moe.experts[i](u) for i in order)
                        want[b, t] = y if drop else y + moe.shared_experts(u)
            check(f"routing override == per-token loop (disable_top {d}, top_k {k}, drop_shared {drop}, norm {norm})",
                  torch.allclose(got, want, rtol=1e-12, atol=1e-14))
        model.set_routing_override(1, 0, False)
        model.train()
        try:
            model(torch.zeros(1, 3, dtype=torch.long))
            check("routing override refused in training mode", False)
        except RuntimeError:
            check("routing override refused in training mode", True)
        model.set_routing_override()


def check_hash():
    # dsmoe's own rule (the paper's Hash Layer baseline fixes no hash): lowbias32 of the id as uint32,
    # mod E; see tests/cpp/test_ops_moe.cpp HashRoute.
    ids = np.arange(0, 300000, dtype=np.uint64)
    ids = np.concatenate([ids, np.array([102399, 2 ** 31 - 1, 2 ** 32 - 1], dtype=np.uint64)])
    h = ids.astype(np.uint32)
    with np.errstate(over="ignore"):
        h ^= h >> np.uint32(16)
        h *= np.uint32(0x7FEB352D)
        h ^= h >> np.uint32(15)
        h *= np.uint32(0x846CA68B)
        h ^= h >> np.uint32(16)
    sample = list(range(0, 300000, 997)) + [102399, 2 ** 31 - 1, 2 ** 32 - 1]
    pos = {int(i): k for k, i in enumerate(ids)}
    ok = all(hash_u32(i) == int(h[pos[i]]) for i in sample)
    check("hash == numpy uint32 implementation", ok)
    known = {i: hash_u32(i) for i in (0, 1, 2, 3, 95, 100, 102399)}
    print("        known values: " + ", ".join(f"h({i})={v:#010x} (%8={v % 8})" for i, v in known.items()))


# ----------------------------------------------------------------------------------------------
def check_oracle_files():
    tmp = tempfile.mkdtemp(prefix="dsmoe_oracle_")
    try:
        _check_oracle_files(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_oracle_files(tmp):
    cfg_dir = os.path.join(HERE, "configs")
    for fn in sorted(os.listdir(cfg_dir)):
        if not fn.endswith(".json"):
            continue
        path = os.path.join(cfg_dir, fn)
        out = os.path.join(tmp, fn.replace(".json", ".safetensors"))
        B, T, N, A = 2, 12, 10, 2
        t0 = time.time()
        r = subprocess.run([sys.executable, os.path.join(HERE, "model_oracle.py"), "--config", path, "--out", out,
                            "--seed", "1234", "--batch", str(B), "--seq", str(T), "--steps", str(N),
                            "--accum", str(A)], capture_output=True, text=True)
        dt = time.time() - t0
        if r.returncode != 0:
            check(f"oracle runs [{fn}]", False, r.stderr[-2000:])
            continue
        d = st.load(out)
        cfg_dict = json.load(open(path))
        cfg = DeepseekConfig(cfg_dict)
        V = cfg.vocab_size
        model = DeepseekForCausalLM(cfg).double().train()
        shapes_ok = all(n in d and d[n].dtype == torch.float32 and list(d[n].shape) == list(p.shape)
                        and f"grad.{n}" in d and d[f"grad.{n}"].dtype == torch.float64
                        for n, p in model.named_parameters())
        shapes_ok &= d["tokens"].dtype == torch.int32 and list(d["tokens"].shape) == [B, T + 1]
        shapes_ok &= list(d["logits"].shape) == [B, T, V] and d["logits64"].dtype == torch.float64
        shapes_ok &= list(d["traj.tokens"].shape) == [N, A, B, T + 1]
        shapes_ok &= all(list(d[k].shape) == [] for k in ("loss.lm", "loss.expert_aux", "loss.device_aux",
                                                           "loss.comm_aux"))
        check(f"oracle file layout [{fn}] ({dt:.2f}s)", shapes_ok)

        # reload the stored weights into a fresh model; the model must reproduce the stored results
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(d[n].double())
        tok = d["tokens"].long()
        model.set_inject_aux(False)
        logits, lm = model(tok[:, :-1], tok[:, 1:])
        aux = model.aux_losses()
        ea = sum((v[0] for v in aux.values() if v[0] is not None), torch.zeros((), dtype=torch.float64))
        da = sum((v[1] for v in aux.values() if v[1] is not None), torch.zeros((), dtype=torch.float64))
        ca = sum((v for v in model.comm_losses().values() if v is not None), torch.zeros((), dtype=torch.float64))
        (lm + ea + da + ca).backward()
        model.set_inject_aux(True)
        check(f"  reloaded logits/losses match [{fn}]",
              torch.allclose(logits, d["logits64"], rtol=0, atol=1e-13)
              and abs(float(lm) - float(d["loss.lm"])) < 1e-13
              and abs(float(ea) - float(d["loss.expert_aux"])) < 1e-14
              and abs(float(da) - float(d["loss.device_aux"])) < 1e-14
              and abs(float(ca) - float(d["loss.comm_aux"])) < 1e-14)
        gerr = max(float((p.grad - d[f"grad.{n}"]).abs().max()) for n, p in model.named_parameters())
        check(f"  stored grads == grad(lm + aux) [{fn}]", gerr < 1e-13, f"max err {gerr:.1e}")

        # the aux loss is not in loss.lm: recompute CE from logits64 alone
        lp = torch.log_softmax(d["logits64"], -1)
        ce = -lp.gather(-1, tok[:, 1:].unsqueeze(-1)).mean()
        check(f"  loss.lm is the plain CE of logits64 (aux not included) [{fn}]",
              abs(float(ce) - float(d["loss.lm"])) < 1e-13,
              f"lm {float(d['loss.lm']):.6f}, expert aux {float(d['loss.expert_aux']):.6f}, "
              f"device aux {float(d['loss.device_aux']):.6f}")
        if cfg.expert_aux_active and cfg.n_routed_experts:
            check(f"  expert aux nonzero and gradient differs from lm-only gradient [{fn}]",
                  float(d["loss.expert_aux"]) > 0 and grad_differs_without_aux(model, d, tok))

        # The V2 configs must exercise what they are for: the group limit changes some token's experts
        # (with topk_group >= k it never would), the communication loss is on, the capacity binds.
        if cfg.n_routed_experts and cfg.topk_method == "group_limited_greedy":
            changed = 0
            for i, _ in model.moe_layers():
                sc, idx = d[f"route.scores.{i}"], d[f"route.idx.{i}"].long()
                greedy = torch.topk(sc, idx.shape[1], dim=-1).indices.sort(-1).values
                changed += int((greedy != idx.sort(-1).values).any(-1).sum())
            check(f"  device-limited routing changes some tokens' experts [{fn}]", changed > 0, f"{changed} tokens")
        if cfg.n_routed_experts and cfg.comm_aux_alpha > 0:
            check(f"  comm aux nonzero [{fn}]", float(d["loss.comm_aux"]) > 0)
        if cfg.n_routed_experts and cfg.capacity_factor > 0:
            dropped = sum(int((d[k] == 0).sum()) for k in d if k.startswith("route.keep."))
            check(f"  the capacity drops slots [{fn}]", dropped > 0, f"{dropped} slots")

        # schedule: the paper's step rule (shared/reference/deepseekmoe.md section 4: linear
        # warmup, then x0.316 at 80% and again at 90% of the steps); "at 80%" read as steps s > round(0.8 N)
        # is dsmoe's own rule (model/config.cpp learning_rate). Warmup 3 of N = 10: s = 9 and 10 drop.
        want_lr = [1e-3 / 3, 2e-3 / 3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3 * 0.316, 1e-3 * 0.316 * 0.316]
        check(f"  lr schedule [{fn}]", np.allclose(d["traj.lr"].numpy(), want_lr, rtol=1e-15, atol=0),
              str([round(x, 7) for x in d["traj.lr"].tolist()]))
        print("        traj.lm_loss " + " ".join(f"{x:.4f}" for x in d["traj.lm_loss"].tolist()))
        print("        traj.grad_norm " + " ".join(f"{x:.3f}" for x in d["traj.grad_norm"].tolist()))
        margins = [float(d[k].min()) for k in d if k.startswith("route.margin.")]
        if margins:
            check(f"  min top-k routing margin of the stored batch >= 1e-5 [{fn}]", min(margins) >= 1e-5,
                  f"{min(margins):.2e}")


def grad_differs_without_aux(model, d, tok):
    model.zero_grad(set_to_none=True)
    model.set_inject_aux(False)
    try:
        _, lm = model(tok[:, :-1], tok[:, 1:])
        lm.backward()
    finally:
        model.set_inject_aux(True)
    gate_names = [n for n, _ in model.named_parameters() if n.endswith("mlp.gate.weight")]
    p = dict(model.named_parameters())
    return all(float((p[n].grad - d[f"grad.{n}"]).abs().max()) > 1e-8 for n in gate_names)


def check_adamw_formula():
    # documents the exact update the C++ must implement (torch 1.13 AdamW)
    g = torch.Generator().manual_seed(0)
    p = torch.randn(5, 3, generator=g, dtype=torch.float64)
    q = p.clone().requires_grad_(True)
    opt = torch.optim.AdamW([q], lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    m = torch.zeros_like(p)
    v = torch.zeros_like(p)
    for t in range(1, 6):
        grad = torch.randn(5, 3, generator=g, dtype=torch.float64)
        q.grad = grad.clone()
        opt.step()
        lr = 1e-3
        p = p * (1 - lr * 0.1)
        m = 0.9 * m + 0.1 * grad
        v = 0.95 * v + 0.05 * grad * grad
        bc1, bc2 = 1 - 0.9 ** t, 1 - 0.95 ** t
        p = p - (lr / bc1) * m / (v.sqrt() / math.sqrt(bc2) + 1e-8)
    check("AdamW = p*=(1-lr*wd); p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)",
          torch.allclose(q.detach(), p, rtol=1e-14, atol=1e-16))
    # clip_grad_norm_: coef = max_norm / (total_norm + 1e-6), applied only when < 1
    w = torch.ones(4, dtype=torch.float64, requires_grad=True)
    w.grad = torch.full((4,), 3.0, dtype=torch.float64)
    n = torch.nn.utils.clip_grad_norm_([w], 1.0)
    check("clip_grad_norm_ coefficient = max_norm/(norm+1e-6)",
          abs(float(n) - 6.0) < 1e-15 and torch.allclose(w.grad, torch.full((4,), 3.0 / (6.0 + 1e-6), dtype=torch.float64),
                                                          rtol=1e-15, atol=0))


def check_accum_equivalence():
    # Dense model (no aux): A micro-batches of B == one batch of A*B, through the whole trajectory.
    cfg = dict(TINY, n_routed_experts=None)
    tc = mo.training_config({"training": {"lr": 1e-2, "warmup_steps": 1, "steps": 4, "schedule": "cosine"}}, 4)
    g = torch.Generator().manual_seed(11)
    toks = torch.randint(0, 16, (4, 2, 3, 6), generator=g)
    m1, _ = build(cfg, 4)
    m2, _ = build(cfg, 4)
    h1 = mo.train_trajectory(m1, tc, traj_tokens=toks)
    h2 = mo.train_trajectory(m2, tc, traj_tokens=toks.reshape(4, 1, 6, 6))
    ok = np.allclose(h1[0], h2[0], rtol=1e-12) and np.allclose(h1[5], h2[5], rtol=1e-12) and all(
        torch.allclose(a, b, rtol=1e-10, atol=1e-14) for a, b in zip(m1.parameters(), m2.parameters()))
    check("dense: accum 2 x batch 3 == accum 1 x batch 6 (trajectory)", ok)
    # MoE with aux: the aux gradient is NOT divided by A (official): the aux grads add up per micro-batch.
    cfg = dict(TINY, aux_loss_alpha=0.5, initializer_range=0.3)
    m, g = build(cfg, 2)
    toks = torch.randint(0, 16, (2, 2, 7), generator=g)
    m.zero_grad(set_to_none=True)
    for a in range(2):
        mo.forward_backward(m, toks[a], lm_scale=0.5)
    ga = m.model.layers[1].mlp.gate.weight.grad.clone()
    want = torch.zeros_like(ga)
    for a in range(2):
        m.zero_grad(set_to_none=True)
        m.set_inject_aux(False)
        _, lm = m(toks[a, :, :-1], toks[a, :, 1:])
        (0.5 * lm + m.aux_losses()[1][0]).backward()
        m.set_inject_aux(True)
        want += m.model.layers[1].mlp.gate.weight.grad
    check("MoE: accumulated grads = sum_a (lm_a / A + aux_a)", torch.allclose(ga, want, rtol=1e-12, atol=1e-16))


def bf16_rne_bits(x32):
    """Round-to-nearest-even of float32 values to bf16 by integer arithmetic on the bits (numpy),
    back as float32: an implementation independent of torch's .bfloat16()."""
    u = x32.view(np.uint32).astype(np.uint64)
    lo, hi = u & 0xFFFF, u >> 16
    up = (lo > 0x8000) | ((lo == 0x8000) & ((hi & 1) == 1))
    return ((hi + up) << 16).astype(np.uint32).view(np.float32)


def check_bf16_gemm_inputs():
    """set_gemm_inputs("bf16"): the rounding is nearest even (ties included), the forward is the fp64
    product of the rounded operands, and the backward products round their inputs too."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(4000, generator=g, dtype=torch.float64).float().numpy()
    # exact ties (low half 0x8000) with odd and even upper halves, both signs
    ties = (np.array([0x3F808000, 0x3F818000, 0xBF808000, 0xBF818000], dtype=np.uint32)).view(np.float32)
    v = np.concatenate([x, ties]).astype(np.float32)
    got = model_ref._bf16(torch.from_numpy(v).double()).float().numpy()
    check("bf16 rounding of the oracle == bit-level round-to-nearest-even (incl. ties)",
          np.array_equal(got.view(np.uint32), bf16_rne_bits(v).view(np.uint32)))
    xs = torch.randn(3, 5, 16, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(24, 16, generator=g, dtype=torch.float64, requires_grad=True)
    gy = torch.randn(3, 5, 24, generator=g, dtype=torch.float64)
    model_ref.set_gemm_inputs("bf16")
    try:
        y = model_ref.project(xs, w)
        y.backward(gy)
    finally:
        model_ref.set_gemm_inputs("exact")
    r = lambda t: torch.from_numpy(bf16_rne_bits(t.detach().float().numpy())).double()  # noqa: E731
    ok_f = torch.allclose(y, r(xs) @ r(w).T, rtol=1e-14, atol=0)
    ok_dx = torch.allclose(xs.grad, r(gy) @ r(w), rtol=1e-14, atol=0)
    ok_dw = torch.allclose(w.grad, r(gy).reshape(-1, 24).T @ r(xs).reshape(-1, 16), rtol=1e-14, atol=0)
    check("bf16 projection: y = r(x) r(w)^T, dx = r(g) r(w), dw = r(g)^T r(x) in fp64", ok_f and ok_dx and ok_dw,
          f"forward {ok_f}, dx {ok_dx}, dw {ok_dw}")
    check("bf16 projection differs from the exact one", not torch.allclose(y, xs @ w.T, rtol=1e-6, atol=0))


PARTS = {
    "analytic": (check_hash, check_uniform_identity, check_aux_closed_form, check_attention_and_rope,
                 check_dispatch_parity, check_routing_override, check_adamw_formula, check_accum_equivalence,
                 check_bf16_gemm_inputs),
    "gradcheck": (check_gradcheck,),
    "files": (check_oracle_files,),
}


def main():
    global GRADCHECK_ELEMS
    ap = argparse.ArgumentParser()
    ap.add_argument("--fast", action="store_true", help=f"gradcheck {FAST_GRADCHECK_ELEMS} sampled elements per tensor")
    ap.add_argument("--part", choices=sorted(PARTS) + ["all"], default="all")
    args = ap.parse_args()
    if args.fast:
        GRADCHECK_ELEMS = FAST_GRADCHECK_ELEMS
    t0 = time.time()
    for part in (PARTS if args.part == "all" else [args.part]):
        for fn in PARTS[part]:
            fn()
    print(f"{len(FAILS)} failure(s), {time.time() - t0:.1f}s" + (": " + "; ".join(FAILS) if FAILS else ""))
    sys.exit(1 if FAILS else 0)


if __name__ == "__main__":
    main()
