"""Oracle for the Hugging Face checkpoint loader and the inference engine.

  /usr/bin/python3 tests/oracle/hf_oracle.py --config CFG.json --dir HF_DIR --out OUT.safetensors \
      --seed S --dtype bf16|f32|f16 [--shard-bytes N] --prompt-lens 5,9,3 --gen 8

Writes a tiny random DeepSeekMoE checkpoint in exactly the Hugging Face layout of
deepseek-moe-16b-base, independently of dsmoe's writer:
  HF_DIR/config.json                       the config (HF keys only, plus architectures / model_type)
  HF_DIR/model.safetensors                 when every tensor fits one shard of --shard-bytes, else
  HF_DIR/model-0000i-of-0000n.safetensors  shards and
  HF_DIR/model.safetensors.index.json      {"metadata": {"total_size"}, "weight_map"}
with tensors stored in --dtype. The weights are rounded to that dtype first, and the reference
(tests/oracle/model_ref.py, the official modeling semantics, in eval mode: the official moe_infer
dispatch) runs in float64 on exactly the stored values.

OUT holds, for each prompt i (random tokens, lengths --prompt-lens):
  prompt.i    I32 [n_i]
  logprob.i   F64 [n_i - 1]  log p(prompt[t] | prompt[<t]) for t = 1..n_i-1
  greedy.i    I32 [--gen]    greedy continuation (argmax, full recomputation each step)
  logits.i    F64 [n_i, V]   logits of the prompt
Prompts are redrawn until every greedy step has a top-1/top-2 logit gap >= --min-gap and every
routing decision (over prompt + continuation) a top-k softmax margin >= --min-margin, so an fp32
engine cannot flip a choice by rounding.
"""
import argparse
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402
from model_ref import DeepseekConfig, DeepseekForCausalLM  # noqa: E402

torch.set_num_threads(1)

DT = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def init_weights(model, gen, dtype):
    """Matrices normal(0, 1/sqrt(fan_in)) (embedding: normal(0, 1), lm_head x3 for peaked
    distributions), norm weights 1 + 0.1 normal; rounded to `dtype`, kept as float64."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                std = 1.0 if "embed_tokens" in name else 1.0 / math.sqrt(p.shape[1])
                if name == "lm_head.weight":
                    std *= 3.0
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * std)
            else:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
            p.copy_(p.to(dtype).double())


def routing_margin(model):
    mm = float("inf")
    for _, m in model.moe_layers():
        if "margin" in m.gate.last:
            mm = min(mm, float(m.gate.last["margin"].min()))
    return mm


def greedy(model, prompt, n):
    seq = prompt.clone()
    gaps = []
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(seq.view(1, -1))
            last = logits[0, -1]
            top = torch.topk(last, 2).values
            gaps.append(float(top[0] - top[1]))
            seq = torch.cat([seq, last.argmax().view(1)])
        model(seq.view(1, -1))  # routing of every position of the final sequence
    return seq[len(prompt):], min(gaps) if gaps else float("inf"), routing_margin(model)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config")
    ap.add_argument("--dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--dtype", choices=list(DT), default="f32")
    ap.add_argument("--shard-bytes", type=int, default=1 << 40)
    ap.add_argument("--prompt-lens", default="5,9,3")
    ap.add_argument("--gen", type=int, default=8)
    ap.add_argument("--min-gap", type=float, default=1e-3)
    ap.add_argument("--min-margin", type=float, default=1e-4)
    ap.add_argument("--load", action="store_true",
                    help="read the checkpoint in --dir (written by dsmoe export) instead of writing one")
    args = ap.parse_args()

    if args.load:
        model, cfg = load_hf_dir(args.dir)
        gen = torch.Generator().manual_seed(args.seed)
        write_reference(model, cfg, gen, args, shards="loaded")
        return

    with open(args.config) as f:
        cfg_dict = json.load(f)
    cfg = DeepseekConfig(cfg_dict)
    gen = torch.Generator().manual_seed(args.seed)
    model = DeepseekForCausalLM(cfg).double()
    init_weights(model, gen, DT[args.dtype])
    model.eval()

    # --- the checkpoint, HF layout ---
    os.makedirs(args.dir, exist_ok=True)
    hf_cfg = dict(cfg_dict)
    hf_cfg.update({"architectures": ["DeepseekForCausalLM"], "model_type": "deepseek",
                   "torch_dtype": {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}[args.dtype]})
    with open(os.path.join(args.dir, "config.json"), "w") as f:
        json.dump(hf_cfg, f, indent=2)
    shards, cur, size, total = [[]], 0, 0, 0
    es = torch.tensor([], dtype=DT[args.dtype]).element_size()
    for name, p in model.named_parameters():
        b = p.numel() * es
        if cur > 0 and cur + b > args.shard_bytes:
            shards.append([])
            cur = 0
        shards[-1].append((name, p))
        cur += b
        total += b
    weight_map = {}
    for i, sh in enumerate(shards):
        fname = "model.safetensors" if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        st.save(os.path.join(args.dir, fname), {n: p.detach().to(DT[args.dtype]) for n, p in sh},
                metadata={"format": "pt"})
        for n, _ in sh:
            weight_map[n] = fname
    if len(shards) > 1:
        with open(os.path.join(args.dir, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)

    write_reference(model, cfg, gen, args, shards=str(len(shards)))


def load_hf_dir(d):
    """A HF checkpoint folder the way transformers' from_pretrained reads it: config.json (keys the
    config class does not know are ignored), then model.safetensors or the index's shards; every
    parameter of the module must be present with its shape (strict loading)."""
    with open(os.path.join(d, "config.json")) as f:
        cfg_dict = json.load(f)
    assert cfg_dict.get("model_type") == "deepseek", cfg_dict.get("model_type")
    assert "DeepseekForCausalLM" in cfg_dict.get("architectures", []), cfg_dict.get("architectures")
    cfg = DeepseekConfig({k: v for k, v in cfg_dict.items() if k != "training"})
    model = DeepseekForCausalLM(cfg).double()
    idx = os.path.join(d, "model.safetensors.index.json")
    tensors = {}
    if os.path.exists(idx):
        with open(idx) as f:
            wm = json.load(f)["weight_map"]
        for fname in sorted(set(wm.values())):
            tensors.update(st.load(os.path.join(d, fname)))
        assert set(wm) == set(tensors), "index and shards disagree"
    else:
        tensors = st.load(os.path.join(d, "model.safetensors"))
    state = {k: v.double() for k, v in tensors.items()}
    model.load_state_dict(state, strict=True)  # raises on a missing, unexpected or mis-shaped tensor
    model.eval()
    return model, cfg


def write_reference(model, cfg, gen, args, shards):
    out = {}
    lens = [int(x) for x in args.prompt_lens.split(",") if x]
    for i, n in enumerate(lens):
        for _ in range(500):
            prompt = torch.randint(0, cfg.vocab_size, (n,), generator=gen, dtype=torch.long)
            cont, gap, margin = greedy(model, prompt, args.gen)
            with torch.no_grad():
                logits, _ = model(prompt.view(1, -1))
                margin = min(margin, routing_margin(model))
            if gap >= args.min_gap and margin >= args.min_margin:
                break
        else:
            raise RuntimeError("no prompt with large enough greedy gaps and routing margins")
        lp = torch.log_softmax(logits[0], dim=-1)
        out[f"prompt.{i}"] = prompt.to(torch.int32)
        out[f"logprob.{i}"] = lp[:-1].gather(1, prompt[1:].view(-1, 1)).view(-1).contiguous()
        out[f"greedy.{i}"] = cont.to(torch.int32)
        out[f"logits.{i}"] = logits[0].contiguous()
    st.save(args.out, out, metadata={"shards": shards, "dtype": args.dtype})


if __name__ == "__main__":
    main()
