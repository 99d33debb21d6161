"""PyTorch oracle for `dsmoe eval --per-domain` (src/experiment/domain_eval.*): on a tiny random model
and D "domains" of token batches, the per-domain loss, the domain x expert load of every MoE layer,
the mutual information between domain and expert choice, the top-domain fractions, the shared and
routed output norms and the routed experts' output cosines, computed here independently of dsmoe.

  /usr/bin/python3 tests/oracle/domain_oracle.py --config CFG.json --out OUT.safetensors \
      --seed S --batch B --seq T --domains D --sample-every K

Domain d draws its tokens uniformly from its own slice of the vocabulary, [d V / D, (d + 1) V / D),
so that routing differs between domains; a batch whose top-k routing margin is below 1e-5 is redrawn
(an fp32 engine must pick the same experts). The model (model_ref.py) runs in float64 on weights that
are exactly the stored F32 values; eval mode, one forward of [B, T] per domain.

File layout (L = a MoE layer index, E routed experts):
  <hf name>            F32  every parameter
  tokens               I32  [D, B, T+1]; domain d's inputs tokens[d, :, :T], targets tokens[d, :, 1:]
  loss                 F64  [D] mean cross-entropy of each domain's B*T targets
  load.L               I64  [D, E] routed selections of each expert by each domain's tokens
  mi.L, h_domain.L, h_expert.L, mi_norm.L   F64 []  I(domain; expert) over selections (nats), the two
                       entropies, and I / min(H(domain), H(expert))
  top_frac.L           F64  [E] max_d load[d, e] / sum_d load[d, e]
  shared_norm.L        F64  [D] mean over the domain's tokens of ||shared_experts(x)||  (absent without)
  routed_norm.L        F64  [D] mean of ||sum_k gate_k expert_k(x)||
  cos.L                F64  [E, E] mean over sampled tokens (flat index b*T+t with index % K == 0, all
                       domains) of cos(expert_i(x), expert_j(x)); diagonal 1
  cos_mean.L           F64  [] mean of cos.L over the pairs i < j
"""
import argparse
import json
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402
from model_ref import DeepseekConfig, DeepseekForCausalLM  # noqa: E402
from model_oracle import init_weights, routing_margin  # noqa: E402

torch.set_num_threads(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--seq", type=int, required=True)
    ap.add_argument("--domains", type=int, required=True)
    ap.add_argument("--sample-every", type=int, required=True)
    args = ap.parse_args()
    with open(args.config) as f:
        cfg_dict = json.load(f)
    cfg = DeepseekConfig(cfg_dict)
    B, T, V, D, K = args.batch, args.seq, cfg.vocab_size, args.domains, args.sample_every
    E = cfg.n_routed_experts
    gen = torch.Generator().manual_seed(args.seed)
    model = DeepseekForCausalLM(cfg).double()
    init_weights(model, gen)
    model.eval()

    # Capture each MoE layer's input (the post-attention RMSNorm output) on every forward.
    captured = {}
    for i, m in model.moe_layers():
        m.register_forward_hook(lambda mod, inp, out, i=i: captured.__setitem__(i, inp[0].detach()))

    tokens = torch.zeros(D, B, T + 1, dtype=torch.long)
    for d in range(D):
        lo, hi = d * V // D, (d + 1) * V // D
        for _ in range(1000):
            tokens[d] = torch.randint(lo, hi, (B, T + 1), generator=gen)
            with torch.no_grad():
                model(tokens[d, :, :-1])
            if routing_margin(model) >= 1e-5:
                break
        else:
            raise RuntimeError(f"domain {d}: no batch with routing margin >= 1e-5")

    out = {n: p.detach().float() for n, p in model.named_parameters()}
    out["tokens"] = tokens.to(torch.int32)
    losses = torch.zeros(D, dtype=torch.float64)
    load = {i: torch.zeros(D, E, dtype=torch.int64) for i, _ in model.moe_layers()}
    shared_norm = {i: torch.zeros(D, dtype=torch.float64) for i, _ in model.moe_layers()}
    routed_norm = {i: torch.zeros(D, dtype=torch.float64) for i, _ in model.moe_layers()}
    cos_sum = {i: torch.zeros(E, E, dtype=torch.float64) for i, _ in model.moe_layers()}
    sampled = 0
    with torch.no_grad():
        for d in range(D):
            logits, loss = model(tokens[d, :, :-1], tokens[d, :, 1:])
            losses[d] = loss
            n_sampled = 0
            for i, m in model.moe_layers():
                x = captured[i].reshape(B * T, -1)
                idx, w = m.gate.last["idx"], m.gate.last["weight"]  # [N, k]
                load[i][d] += torch.bincount(idx.reshape(-1), minlength=E)
                # Routed part: each token's chosen experts, gated, summed (written out, not moe_infer).
                routed = torch.zeros_like(x)
                for t in range(B * T):
                    for j in range(idx.shape[1]):
                        routed[t] += w[t, j] * m.experts[int(idx[t, j])](x[t:t + 1])[0]
                routed_norm[i][d] = routed.norm(dim=1).mean()
                if cfg.n_shared_experts is not None:
                    shared_norm[i][d] = m.shared_experts(x).norm(dim=1).mean()
                xs = x[::K]  # flat indices 0, K, 2K, ...
                n_sampled = xs.shape[0]
                ys = torch.stack([m.experts[e](xs) for e in range(E)])  # [E, S, H]
                yn = F.normalize(ys, dim=2)
                cos_sum[i] += torch.einsum("ash,bsh->ab", yn, yn)
            sampled += n_sampled
    out["loss"] = losses
    for i, _ in model.moe_layers():
        c = load[i].double()
        p = c / c.sum()
        pd, pe = p.sum(1, keepdim=True), p.sum(0, keepdim=True)
        nz = p > 0
        mi = (p[nz] * (p[nz] / (pd.expand_as(p)[nz] * pe.expand_as(p)[nz])).log()).sum()
        h_d = -(pd[pd > 0] * pd[pd > 0].log()).sum()
        h_e = -(pe[pe > 0] * pe[pe > 0].log()).sum()
        out[f"load.{i}"] = load[i]
        out[f"mi.{i}"] = mi.reshape(())
        out[f"h_domain.{i}"] = h_d.reshape(())
        out[f"h_expert.{i}"] = h_e.reshape(())
        out[f"mi_norm.{i}"] = (mi / torch.minimum(h_d, h_e)).reshape(())
        out[f"top_frac.{i}"] = c.max(0).values / c.sum(0)
        out[f"routed_norm.{i}"] = routed_norm[i]
        if cfg.n_shared_experts is not None:
            out[f"shared_norm.{i}"] = shared_norm[i]
        cm = cos_sum[i] / sampled
        out[f"cos.{i}"] = cm
        iu = torch.triu_indices(E, E, 1)
        out[f"cos_mean.{i}"] = cm[iu[0], iu[1]].mean().reshape(())
    st.save(args.out, out, metadata={"config": json.dumps(cfg_dict), "seed": args.seed, "batch": B, "seq": T,
                                     "domains": D, "sample_every": K, "sampled_tokens": sampled})


if __name__ == "__main__":
    main()
