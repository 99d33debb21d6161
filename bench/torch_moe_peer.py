#!/usr/bin/python3
"""PyTorch peer for bench/bench_moe.cpp: times the official DeepSeekMoE module's TRAINING path
(tests/oracle/model_ref.py: MoEGate + repeat_interleave + per-expert masked MLP + AddAuxiliaryLoss +
shared experts), forward + backward, fp32, on CPU, at the shapes of Moe_LayerFwdBwd, and whole
training steps of the TrainStep_* models (the same config files).

Run with Debian's interpreter, which has torch 1.13:  /usr/bin/python3 bench/torch_moe_peer.py --threads 2

FLOP counting is the one of bench_moe.cpp:
  * MoE layer: active = (top_k + n_shared) * 3 * H * I + n_routed * H  (experts + router),
    FLOPs per iteration = 6 * active * N  (2 per multiply-add, backward twice the forward).
  * Training step: train_flops_per_token = 6 * activated_nonembed_params + 12 * layers * H * T
    (src/model/params.cpp model_stats), times B * T.
Time per iteration is the mean over the timed iterations (as Google Benchmark reports it), after
untimed warm-up iterations.

Prints one line per case (human readable) and, with --json FILE, writes the figures as JSON.
"""
import argparse
import ctypes
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "oracle"))
from model_ref import DeepseekConfig, DeepseekForCausalLM, DeepseekMoE  # noqa: E402

# The Moe_LayerFwdBwd shapes of bench_moe.cpp: (H, shared, routed, top-k, expert width, tokens).
MOE_SHAPES = {
    "small": (128, 1, 15, 3, 64, 4096),
    "2b": (1280, 1, 63, 7, 896, 8192),
    "16b": (2048, 2, 64, 6, 1408, 4096),
}


def openblas_info(threads):
    """Torch 1.13 (Debian) does its fp32 matmuls through the system BLAS; report which kernels it got
    and pin its thread count (the pthread OpenBLAS does not follow torch.set_num_threads)."""
    for path in ("/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblasp-r0.3.21.so",):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        lib.openblas_get_corename.restype = ctypes.c_char_p
        lib.openblas_get_config.restype = ctypes.c_char_p
        lib.openblas_set_num_threads(threads)
        return {"corename": lib.openblas_get_corename().decode(), "config": lib.openblas_get_config().decode(),
                "threads": int(lib.openblas_get_num_threads())}
    return {"corename": "?", "config": "OpenBLAS not found", "threads": -1}


def loaded_blas():
    with open("/proc/self/maps") as f:
        return sorted({l.split()[-1] for l in f if "blas" in l.lower() and "/" in l})


def time_it(step, warmup, iters):
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return sum(times) / len(times), min(times)


def moe_case(name, H, Ks, E, k, I, N, warmup, iters):
    cfg = DeepseekConfig({
        "vocab_size": 256, "hidden_size": H, "num_hidden_layers": 1, "num_attention_heads": 8,
        "num_key_value_heads": 8, "moe_intermediate_size": I, "n_shared_experts": Ks,
        "n_routed_experts": E, "num_experts_per_tok": k, "max_position_embeddings": 4096,
    })
    torch.manual_seed(1)
    moe = DeepseekMoE(cfg).float().train()
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.02)
    x = torch.randn(1, N, H, requires_grad=True)  # batch 1 x seq N, as bench_moe.cpp
    dout = torch.randn(1, N, H) * 1e-3
    ids = torch.ones(1, N, dtype=torch.long)

    def step():
        x.grad = None
        for p in moe.parameters():
            p.grad = None
        y = moe(x, ids)
        y.backward(dout)

    mean_s, min_s = time_it(step, warmup, iters)
    active = (k + Ks) * 3 * H * I + E * H
    flops = 6.0 * active * N
    return {"name": f"Moe_LayerFwdBwd/H:{H}/Ks:{Ks}/E:{E}/k:{k}/I:{I}/N:{N}", "shape": name,
            "ms": mean_s * 1e3, "min_ms": min_s * 1e3, "iters": iters,
            "GFLOP/s": flops / mean_s / 1e9, "tokens/s": N / mean_s}


ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
# The TrainStep_* benchmarks of bench_moe.cpp: config file, batch, sequence length, layers kept (0: all).
TRAIN_CASES = {
    "train": ("TrainStep_Default", "configs/default.json", 16, 256, 0),
    "train_paper": ("TrainStep_PaperDeepSeekMoE", "configs/paper/deepseekmoe.json", 16, 256, 0),
    "train_2b": ("TrainStep_Paper2B", "configs/paper-2b.json", 4, 512, 2),
}


def load_config_json(path):
    """A dsmoe config file with its "extends" chain resolved (a file's keys replace its base's), as
    src/model/config.cpp load_config_json; only the model keys are kept."""
    with open(path) as f:
        d = json.load(f)
    if "extends" in d:
        base = load_config_json(os.path.join(os.path.dirname(path), d.pop("extends")))
        base.update(d)
        d = base
    return {k: v for k, v in d.items() if k not in ("training", "_comment")}


def train_case(case, warmup, iters):
    name, path, B, T, layers = TRAIN_CASES[case]
    d = load_config_json(os.path.join(ROOT, path))
    if layers:
        d["num_hidden_layers"] = layers
    cfg = DeepseekConfig(d)
    torch.manual_seed(1)
    model = DeepseekForCausalLM(cfg).float().train()
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, cfg.vocab_size, (B, T), generator=g)
    y = torch.randint(0, cfg.vocab_size, (B, T), generator=g)

    def step():
        for p in model.parameters():
            p.grad = None
        _, loss = model(x, y)
        loss.backward()

    mean_s, min_s = time_it(step, warmup, iters)
    # model_stats: activated non-embedding params (lm_head counts, the embedding table does not).
    H, E, k, I = cfg.hidden_size, cfg.n_routed_experts, cfg.num_experts_per_tok, cfg.moe_intermediate_size
    total = sum(p.numel() for p in model.parameters())
    inactive = sum((E - k) * 3 * H * I for l in range(cfg.num_hidden_layers) if cfg.is_moe_layer(l))
    act_nonembed = total - inactive - cfg.vocab_size * H
    fpt = 6.0 * act_nonembed + 12.0 * cfg.num_hidden_layers * H * T
    return {"name": name, "ms": mean_s * 1e3, "min_ms": min_s * 1e3, "iters": iters,
            "GFLOP/s": fpt * B * T / mean_s / 1e9, "tokens/s": B * T / mean_s,
            "train_flops_per_token": fpt}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cases", default="small,2b,16b,train,train_paper",
                    help="comma list of small,2b,16b (MoE layers), train, train_paper, train_2b (training steps)")
    ap.add_argument("--tokens", action="append", default=[],
                    help="override tokens of a MoE shape, e.g. --tokens 16b=1024 (repeatable)")
    ap.add_argument("--iters", type=int, default=0, help="timed iterations (0: 10 small/train, 2 big)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--json", default="")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    blas = openblas_info(a.threads)
    info = {"torch": torch.__version__, "threads": torch.get_num_threads(), "openblas": blas,
            "blas_libs": loaded_blas(), "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "(unset)"),
            "mkldnn": torch.backends.mkldnn.is_available(),
            "cpu_capability": [l.strip() for l in torch.__config__.show().splitlines() if "CPU capability" in l]}
    print(f"# torch {info['torch']} threads={info['threads']} OpenBLAS core={blas['corename']} "
          f"(OPENBLAS_CORETYPE={info['OPENBLAS_CORETYPE']}, blas threads={blas['threads']}) "
          f"{'; '.join(info['cpu_capability'])}", flush=True)

    tokens = dict(MOE_SHAPES)
    for t in a.tokens:
        key, n = t.split("=")
        H, Ks, E, k, I, _ = tokens[key]
        tokens[key] = (H, Ks, E, k, I, int(n))
    results = []
    for case in a.cases.split(","):
        if case in TRAIN_CASES:
            r = train_case(case, a.warmup, a.iters or (2 if case == "train_2b" else 10))
        else:
            r = moe_case(case, *tokens[case], a.warmup, a.iters or (10 if case == "small" else 2))
        results.append(r)
        print(f"{r['name']:<48} {r['ms']:10.1f} ms  {r['GFLOP/s']:8.2f} GFLOP/s  {r['tokens/s']:10.0f} tokens/s"
              f"  ({r['iters']} iters, min {r['min_ms']:.1f} ms)", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"info": info, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
