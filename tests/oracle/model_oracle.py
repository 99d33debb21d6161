"""PyTorch oracle for the DeepSeekMoE model: weights, a batch, logits, losses, every parameter gradient,
and optionally a short AdamW training trajectory, written to one safetensors file (tests/oracle/st.py).

  /usr/bin/python3 tests/oracle/model_oracle.py --config CFG.json --out OUT.safetensors \
      --seed S --batch B --seq T [--steps N --accum A] [--min-margin 1e-5] [--overrides JSON]
      [--gemm-inputs exact|bf16]

The model (tests/oracle/model_ref.py) runs in float64 on weights that are exactly the stored F32 values;
with --gemm-inputs bf16 every projection's products (forward and backward) take bf16-rounded inputs
(model_ref.set_gemm_inputs: what dsmoe's training.precision "bf16" computes, in float64).
Random draws, all from torch.Generator().manual_seed(S): the weights in named_parameters() order, then
the batch, then the trajectory's micro-batches in (step, micro-batch) order. A token batch whose top-k
routing margin (softmax prob of the k-th minus the (k+1)-th expert, at the weights it is used with) is
below --min-margin is redrawn, so an fp32 engine cannot route it differently by rounding. With
--overrides '[[disable_top, top_k, drop_shared], ...]' (evaluation-only routing overrides, see
model_ref.py) the batch is also redrawn until the margins at BOTH rank boundaries of the chosen set
(disable_top and disable_top + k) clear --min-margin under every override.

File layout (scalars have shape []; L = a MoE layer index, K = experts per token, 1 for hash):
  <hf name>                 F32  every parameter, HF checkpoint name and shape
  tokens                    I32  [B, T+1]; input tokens[:, :T], targets tokens[:, 1:]
  logits / logits64         F32 / F64 [B, T, V]
  loss.lm                   F64  []  mean CE over the B*T targets (no aux loss in it)
  loss.expert_aux           F64  []  sum over MoE layers of the expert-level balance loss (0 when off)
  loss.device_aux           F64  []  sum over MoE layers of the device-level balance loss (0 when off)
  loss.comm_aux             F64  []  sum over MoE layers of the communication balance loss (0 when off)
  aux.expert.L, aux.device.L, aux.comm.L F64 []  per MoE layer
  route.idx.L               I32  [B*T, K] chosen expert ids, by descending score (token-major b*T+t)
  route.weight.L            F64  [B*T, K] their gates (after norm_topk_prob)
  route.scores.L            F64  [B*T, n_routed] softmax scores        (learned router only)
  route.margin.L            F64  [B*T] k-th minus (k+1)-th score (inf when K = n_routed; learned only);
                                 also the group and capacity boundaries' gaps when those apply
  route.keep.L              I32  [B*T, K] 1 = the slot survived the capacity limit (capacity_factor > 0)
  grad.<hf name>            F64  gradient of lm_loss + all aux losses (aux injected with gradient 1)
with --steps N (AdamW, hyperparameters from the config's "training" object):
  traj.tokens               I32  [N, A, B, T+1]
  traj.lm_loss              F64  [N] mean LM loss of the step's micro-batches, before the update
  traj.expert_aux, traj.device_aux, traj.comm_aux F64 [N] same for the summed aux losses
  traj.lr                   F64  [N] learning rate used at step s (1-based)
  traj.grad_norm            F64  [N] total L2 norm of all gradients before clipping
  traj.param.<hf name>      F64  the parameters after the N steps (fp32 values: the trajectory keeps fp32 master weights)
  traj.route.idx.L          I32  [N, A, B*T, k] routed experts of every micro-batch of the trajectory
  traj.route.margin         F64  [N, A] smallest routing margin of each micro-batch (inf: no learned router)
  traj.state.S.param.<hf name>, traj.state.S.exp_avg.<hf name>, traj.state.S.exp_avg_sq.<hf name>
                            F32  the weights and AdamW moments step S (1..N) starts from (moments 0 at S = 1)
  traj.grad.S.<hf name>     F32  step S's gradient (summed over its micro-batches), before clipping
with --overrides, for the i-th override (0-based), an eval-mode forward (no aux losses) of the same batch:
  ovr.I.logits64            F64  [B, T, V]
  ovr.I.loss.lm             F64  []
  ovr.I.route.idx.L, ovr.I.route.weight.L, ovr.I.route.scores.L (learned router only): as route.*.L
__metadata__: config (JSON), seed, batch, seq, steps, accum, scalar_shape, min_route_margin,
min_margin_arg, training (the resolved training hyperparameters, JSON).
"""
import argparse
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402
from model_ref import DeepseekConfig, DeepseekForCausalLM, set_gemm_inputs  # noqa: E402

torch.set_num_threads(1)  # tiny models: threads only add overhead and nondeterminism

TRAIN_DEFAULTS = {
    "lr": 1e-3,
    "min_lr": None,  # cosine only; default 0.1 * lr
    "warmup_steps": 0,
    "steps": None,  # total steps for the schedule; default --steps
    "schedule": "step",
    "beta1": 0.9,
    "beta2": 0.95,
    "eps": 1e-8,
    "weight_decay": 0.1,
    "grad_clip": 1.0,
}


def init_weights(model, gen):
    """normal(0, initializer_range) for every matrix (router included), 1 + 0.1*normal for 1-D (norm)
    weights, in named_parameters() order from `gen`; then rounded to fp32 values."""
    std = model.config.initializer_range
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * std)
            else:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
            p.copy_(p.float().double())


def round_half_up(x):
    return int(math.floor(x + 0.5))


def lr_at(s, tc):
    """Learning rate of 1-based step s."""
    lr, warm, total = tc["lr"], tc["warmup_steps"], tc["steps"]
    if warm > 0 and s <= warm:
        return lr * s / warm
    sched = tc["schedule"]
    if sched == "constant":
        return lr
    if sched == "step":
        out = lr
        if s > round_half_up(0.8 * total):
            out *= 0.316
        if s > round_half_up(0.9 * total):
            out *= 0.316
        return out
    if sched == "cosine":
        min_lr = tc["min_lr"] if tc["min_lr"] is not None else 0.1 * lr
        span = max(total - warm, 1)
        prog = min(max((s - warm) / span, 0.0), 1.0)
        return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * prog))
    raise ValueError(f"unknown schedule {sched}")


def forward_backward(model, tokens, lm_scale=1.0):
    """Forward on tokens[:, :-1] against tokens[:, 1:]; backward of lm_loss * lm_scale (the aux losses
    get gradient 1 through AddAuxiliaryLoss). Returns logits, lm_loss, {layer: (expert, device, comm)}."""
    inp, tgt = tokens[:, :-1], tokens[:, 1:]
    logits, lm_loss = model(inp, tgt)
    (lm_loss * lm_scale).backward()
    aux = {}
    comm = model.comm_losses()
    for i, (ea, da) in model.aux_losses().items():
        z = torch.zeros((), dtype=torch.float64)
        ca = comm[i]
        aux[i] = (ea.detach() if ea is not None else z, da.detach() if da is not None else z,
                  ca.detach() if ca is not None else z)
    return logits, lm_loss.detach(), aux


def ensure_grads(model):
    # Parameters that got no gradient (not possible in the training path, kept as a guard) get zeros,
    # so AdamW still updates them (weight decay, moments) like an engine that updates every tensor.
    for p in model.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)


def routing_margin(model):
    """Smallest top-k margin (softmax probability of the k-th minus the (k+1)-th routed expert) of the
    last forward, over all learned-router MoE layers; inf when there is none."""
    mm = float("inf")
    for _, m in model.moe_layers():
        if "margin" in m.gate.last:
            mm = min(mm, float(m.gate.last["margin"].min()))
    return mm


def override_forward(model, tokens, ovr):
    """Eval-mode forward of tokens[:, :-1] against tokens[:, 1:] under override ovr = (disable_top,
    top_k, drop_shared); restores the config's routing and the previous mode. Returns logits, loss."""
    was_training = model.training
    model.eval()
    model.set_routing_override(*ovr)
    try:
        with torch.no_grad():
            return model(tokens[:, :-1], tokens[:, 1:])
    finally:
        model.set_routing_override()
        model.train(was_training)


def draw_tokens(model, gen, shape, vocab, min_margin, max_tries=1000, overrides=()):
    """Random tokens [B, T+1] from `gen`, redrawn (from the same generator) until the model's routing of
    tokens[:, :-1] at the current weights has every top-k margin >= min_margin (also under each of
    `overrides`), so an fp32 engine cannot pick a different expert set by rounding. Returns (tokens, margin)."""
    for _ in range(max_tries):
        tokens = torch.randint(0, vocab, shape, generator=gen, dtype=torch.long)
        if min_margin <= 0:
            return tokens, None
        with torch.no_grad():
            model(tokens[:, :-1])
        mm = routing_margin(model)
        for ovr in overrides:
            override_forward(model, tokens, ovr)
            mm = min(mm, routing_margin(model))
        if mm >= min_margin:
            return tokens, mm
    raise RuntimeError(f"no token batch with routing margin >= {min_margin} in {max_tries} draws")


def train_trajectory(model, tc, traj_tokens=None, steps=None, accum=None, draw=None, record=None, fp32_master=False):
    """N AdamW steps of A micro-batches each, tokens from traj_tokens [N, A, B, T+1] or, when None, from
    draw(model) (called at the current weights, before the step's update). The LM loss of each micro-batch
    is scaled by 1/A before backward; the aux losses get gradient 1 per micro-batch (official).
    Returns per-step lists: mean LM loss (before the update), mean expert aux, mean device aux, mean comm aux, lr,
    total grad norm before clipping, the tokens used [N, A, B, T+1], and the routing of every micro-batch:
    {moe layer: [N, A, B*T, k] expert ids} and [N, A] smallest routing margin (inf without a learned router).
    With a dict `record`, also every step's starting state and gradient (fp32), for an engine that replays
    each step from this state: traj.state.S.{param,exp_avg,exp_avg_sq}.NAME and traj.grad.S.NAME (before
    clipping), S = 1..N. fp32_master: the weights are rounded to fp32 after every update (the math stays
    fp64), as an engine that keeps fp32 master weights holds them: a replayed step then starts from exactly
    the oracle's weights, which matters where the engine rounds them again (bf16 products: an fp64 weight
    near a bf16 rounding midpoint would round differently via fp32)."""
    if traj_tokens is not None:
        steps, accum = traj_tokens.shape[0], traj_tokens.shape[1]
    N, A = steps, accum
    decay = [p for _, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for _, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": tc["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=tc["lr"], betas=(tc["beta1"], tc["beta2"]), eps=tc["eps"])
    lm_hist, ea_hist, da_hist, ca_hist, lr_hist, gn_hist, used = [], [], [], [], [], [], []
    route_ids, route_margin = {}, []
    for s in range(1, N + 1):
        if traj_tokens is not None:
            step_tokens = [traj_tokens[s - 1, a] for a in range(A)]
        else:
            step_tokens = [draw(model) for _ in range(A)]
        used.append(torch.stack(step_tokens))
        if record is not None:
            for n, p in model.named_parameters():
                st_p = opt.state.get(p, {})
                record[f"traj.state.{s}.param.{n}"] = p.detach().float().clone()
                for k in ("exp_avg", "exp_avg_sq"):
                    record[f"traj.state.{s}.{k}.{n}"] = st_p[k].float().clone() if k in st_p else torch.zeros_like(p, dtype=torch.float32)
        opt.zero_grad(set_to_none=True)
        lm_sum = ea_sum = da_sum = ca_sum = 0.0
        step_margin = []
        for a in range(A):
            _, l, ax = forward_backward(model, step_tokens[a], lm_scale=1.0 / A)
            for i, m in model.moe_layers():
                route_ids.setdefault(i, []).append(m.gate.last["idx"].to(torch.int32).clone())
            step_margin.append(routing_margin(model))
            lm_sum += float(l)
            ea_sum += sum(float(v[0]) for v in ax.values())
            da_sum += sum(float(v[1]) for v in ax.values())
            ca_sum += sum(float(v[2]) for v in ax.values())
        ensure_grads(model)
        if record is not None:
            for n, p in model.named_parameters():
                record[f"traj.grad.{s}.{n}"] = p.grad.detach().float().clone()
        params = list(model.parameters())
        if tc["grad_clip"] and tc["grad_clip"] > 0:
            gn = torch.nn.utils.clip_grad_norm_(params, tc["grad_clip"])
        else:
            gn = torch.norm(torch.stack([torch.norm(p.grad.detach(), 2) for p in params]), 2)
        lr = lr_at(s, tc)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.step()
        if fp32_master:
            with torch.no_grad():
                for p in params:
                    p.copy_(p.float().double())
        lm_hist.append(lm_sum / A)
        ea_hist.append(ea_sum / A)
        da_hist.append(da_sum / A)
        ca_hist.append(ca_sum / A)
        lr_hist.append(lr)
        gn_hist.append(float(gn))
        route_margin.append(step_margin)
    routes = {i: torch.stack(v).reshape(N, A, *v[0].shape) for i, v in route_ids.items()}
    return (lm_hist, ea_hist, da_hist, ca_hist, lr_hist, gn_hist, torch.stack(used), routes,
            torch.tensor(route_margin, dtype=torch.float64))


def training_config(cfg_dict, n_steps):
    tc = dict(TRAIN_DEFAULTS)
    tc.update(cfg_dict.get("training", {}))
    if tc["steps"] is None:
        tc["steps"] = n_steps
    return tc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--seq", type=int, required=True)
    ap.add_argument("--steps", type=int, default=0)
    ap.add_argument("--accum", type=int, default=1)
    ap.add_argument("--min-margin", type=float, default=1e-5,
                    help="redraw any token batch whose top-k routing margin (softmax prob) is below this; 0 = off")
    ap.add_argument("--overrides", default="[]",
                    help="JSON list of evaluation routing overrides [disable_top, top_k, drop_shared]")
    ap.add_argument("--gemm-inputs", choices=["exact", "bf16"], default="exact",
                    help="bf16: every projection's products take bf16-rounded inputs (model_ref.set_gemm_inputs)")
    args = ap.parse_args()
    set_gemm_inputs(args.gemm_inputs)
    overrides = [(int(d), int(k), bool(s)) for d, k, s in json.loads(args.overrides)]

    with open(args.config) as f:
        cfg_dict = json.load(f)
    cfg = DeepseekConfig(cfg_dict)
    B, T, V = args.batch, args.seq, cfg.vocab_size

    gen = torch.Generator().manual_seed(args.seed)
    model = DeepseekForCausalLM(cfg).double()
    init_weights(model, gen)
    model.train()
    init_state = {n: p.detach().clone() for n, p in model.named_parameters()}

    tokens, _ = draw_tokens(model, gen, (B, T + 1), V, args.min_margin, overrides=overrides)

    out = {}
    for n, p in model.named_parameters():
        out[n] = p.detach().float()
    out["tokens"] = tokens.to(torch.int32)

    model.zero_grad(set_to_none=True)
    logits, lm_loss, aux = forward_backward(model, tokens)
    ensure_grads(model)
    out["logits"] = logits.detach().float()
    out["logits64"] = logits.detach().clone()
    out["loss.lm"] = lm_loss.reshape(())
    exp_total = torch.zeros((), dtype=torch.float64)
    dev_total = torch.zeros((), dtype=torch.float64)
    min_margin = float("inf")
    comm_total = torch.zeros((), dtype=torch.float64)
    for i, (ea, da, ca) in aux.items():
        out[f"aux.expert.{i}"] = ea.reshape(())
        out[f"aux.device.{i}"] = da.reshape(())
        out[f"aux.comm.{i}"] = ca.reshape(())
        exp_total = exp_total + ea
        dev_total = dev_total + da
        comm_total = comm_total + ca
    out["loss.expert_aux"] = exp_total.reshape(())
    out["loss.device_aux"] = dev_total.reshape(())
    out["loss.comm_aux"] = comm_total.reshape(())
    for i, m in model.moe_layers():
        last = m.gate.last
        out[f"route.idx.{i}"] = last["idx"].to(torch.int32).contiguous()
        out[f"route.weight.{i}"] = last["weight"].double().contiguous()
        if "scores" in last:
            out[f"route.scores.{i}"] = last["scores"].contiguous()
            out[f"route.margin.{i}"] = last["margin"].contiguous()
            min_margin = min(min_margin, float(last["margin"].min()))
        if "keep" in last:
            out[f"route.keep.{i}"] = last["keep"].to(torch.int32).contiguous()
    for n, p in model.named_parameters():
        out[f"grad.{n}"] = p.grad.detach().clone()
    for o, ovr in enumerate(overrides):
        logits_o, loss_o = override_forward(model, tokens, ovr)
        out[f"ovr.{o}.logits64"] = logits_o.detach().clone()
        out[f"ovr.{o}.loss.lm"] = loss_o.detach().reshape(())
        for i, m in model.moe_layers():
            last = m.gate.last
            out[f"ovr.{o}.route.idx.{i}"] = last["idx"].to(torch.int32).contiguous()
            out[f"ovr.{o}.route.weight.{i}"] = last["weight"].double().contiguous()
            if "scores" in last:
                out[f"ovr.{o}.route.scores.{i}"] = last["scores"].contiguous()
                min_margin = min(min_margin, float(last["margin"].min()))

    meta = {"config": json.dumps(cfg_dict), "seed": args.seed, "batch": B, "seq": T,
            "steps": args.steps, "accum": args.accum, "scalar_shape": "[]",
            "min_route_margin": repr(min_margin), "min_margin_arg": repr(args.min_margin),
            "overrides": json.dumps(overrides), "gemm_inputs": args.gemm_inputs}

    if args.steps > 0:
        tc = training_config(cfg_dict, args.steps)
        N, A = args.steps, args.accum
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(init_state[n])
        lm_hist, ea_hist, da_hist, ca_hist, lr_hist, gn_hist, traj_tokens, traj_routes, traj_margin = train_trajectory(
            model, tc, steps=N, accum=A,
            draw=lambda m: draw_tokens(m, gen, (B, T + 1), V, args.min_margin)[0], record=out, fp32_master=True)
        f64 = lambda xs: torch.tensor(xs, dtype=torch.float64)  # noqa: E731
        out["traj.tokens"] = traj_tokens.to(torch.int32)
        out["traj.lm_loss"] = f64(lm_hist)
        out["traj.expert_aux"] = f64(ea_hist)
        out["traj.device_aux"] = f64(da_hist)
        out["traj.comm_aux"] = f64(ca_hist)
        out["traj.lr"] = f64(lr_hist)
        out["traj.grad_norm"] = f64(gn_hist)
        for i, ids in traj_routes.items():
            out[f"traj.route.idx.{i}"] = ids.contiguous()
        out["traj.route.margin"] = traj_margin
        for n, p in model.named_parameters():
            out[f"traj.param.{n}"] = p.detach().clone()
        meta["training"] = json.dumps(tc)

    st.save(args.out, out, metadata=meta)


if __name__ == "__main__":
    main()
