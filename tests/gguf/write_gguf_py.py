#!/usr/bin/env python3
# An independent GGUF writer for the import tests: llama.cpp's own Python package `gguf`
# (gguf-py, from the llama.cpp source node-llama-cpp ships; PYTHONPATH points at it) converts a
# Hugging Face DeepSeekMoE folder (config.json, model.safetensors, tokenizer.json, as
# `dsmoe export` writes it) the way llama.cpp's convert_hf_to_gguf.py does for DeepseekForCausalLM:
# q/k rows permuted for llama.cpp's RoPE, routed experts stacked, router and norms F32.
#
#   write_gguf_py.py HF_DIR OUT.gguf TYPE      TYPE: f32 | f16 | bf16 | q8_0 | q4_0
# Quantized types use gguf-py's own numpy quantizers (gguf.quants), not dsmoe's.
import json
import struct
import sys

import numpy as np
import gguf

hf_dir, out_path, qtype = sys.argv[1], sys.argv[2], sys.argv[3]
cfg = json.load(open(f"{hf_dir}/config.json"))
tok = json.load(open(f"{hf_dir}/tokenizer.json"))


def read_safetensors(path):
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        assert e["dtype"] == "F32", (name, e["dtype"])
        b, en = e["data_offsets"]
        out[name] = np.frombuffer(data[8 + n + b:8 + n + en], dtype=np.float32).reshape(e["shape"])
    return out


w = read_safetensors(f"{hf_dir}/model.safetensors")
H, L = cfg["hidden_size"], cfg["num_hidden_layers"]
n_head, n_kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
E = cfg["n_routed_experts"]


def permute(x, heads):  # convert_hf_to_gguf.py's DeepseekModel.permute
    return x.reshape(heads, 2, x.shape[0] // heads // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


types = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
         "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0,
         "q4_0": gguf.GGMLQuantizationType.Q4_0}
ftypes = {"f32": 0, "f16": 1, "bf16": 32, "q8_0": 7, "q4_0": 2}
qt = types[qtype]

g = gguf.GGUFWriter(out_path, "deepseek")
g.add_name("gguf-py test model")
g.add_block_count(L)
g.add_context_length(cfg["max_position_embeddings"])
g.add_embedding_length(H)
g.add_feed_forward_length(cfg["intermediate_size"])
g.add_head_count(n_head)
g.add_head_count_kv(n_kv)
g.add_rope_freq_base(cfg.get("rope_theta", 10000.0))
g.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
g.add_expert_count(E)
g.add_expert_used_count(cfg["num_experts_per_tok"])
g.add_file_type(ftypes[qtype])
g.add_rope_dimension_count(H // n_head)
g.add_rope_scaling_type(gguf.RopeScalingType.NONE)
g.add_leading_dense_block_count(cfg["first_k_dense_replace"])
g.add_vocab_size(cfg["vocab_size"])
g.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
g.add_expert_weights_scale(1.0)
g.add_expert_shared_count(cfg["n_shared_experts"])

# Tokenizer: gpt2 BPE with the Llama 3 pre-tokenizer (the test's tokenizer uses Llama 3's regex).
V = cfg["vocab_size"]
tokens = [f"[PAD{i}]" for i in range(V)]
ttypes = [gguf.TokenType.UNUSED] * V
for s, i in tok["model"]["vocab"].items():
    tokens[i], ttypes[i] = s, gguf.TokenType.NORMAL
for a in tok.get("added_tokens", []):
    tokens[a["id"]] = a["content"]
    ttypes[a["id"]] = gguf.TokenType.CONTROL if a.get("special") else gguf.TokenType.USER_DEFINED
g.add_tokenizer_model("gpt2")
g.add_tokenizer_pre("llama-bpe")
g.add_token_list(tokens)
g.add_token_types(ttypes)
g.add_token_merges([m if isinstance(m, str) else f"{m[0]} {m[1]}" for m in tok["model"]["merges"]])
g.add_bos_token_id(cfg["bos_token_id"])
g.add_eos_token_id(cfg["eos_token_id"])
g.add_add_bos_token(True)
g.add_add_eos_token(False)


def add(name, x, keep_f32=False):
    x = np.ascontiguousarray(x, dtype=np.float32)
    if keep_f32 or x.ndim == 1 or qt == gguf.GGMLQuantizationType.F32:
        g.add_tensor(name, x)
    elif qt == gguf.GGMLQuantizationType.F16:
        g.add_tensor(name, x.astype(np.float16))
    else:
        g.add_tensor(name, gguf.quants.quantize(x, qt), raw_dtype=qt)


add("token_embd.weight", w["model.embed_tokens.weight"])
for l in range(L):
    p, b = f"model.layers.{l}.", f"blk.{l}."
    add(b + "attn_norm.weight", w[p + "input_layernorm.weight"])
    add(b + "attn_q.weight", permute(w[p + "self_attn.q_proj.weight"], n_head))
    add(b + "attn_k.weight", permute(w[p + "self_attn.k_proj.weight"], n_kv))
    add(b + "attn_v.weight", w[p + "self_attn.v_proj.weight"])
    add(b + "attn_output.weight", w[p + "self_attn.o_proj.weight"])
    add(b + "ffn_norm.weight", w[p + "post_attention_layernorm.weight"])
    if l < cfg["first_k_dense_replace"]:
        for x in ("gate", "up", "down"):
            add(b + f"ffn_{x}.weight", w[p + f"mlp.{x}_proj.weight"])
        continue
    add(b + "ffn_gate_inp.weight", w[p + "mlp.gate.weight"], keep_f32=True)
    for x in ("gate", "up", "down"):
        add(b + f"ffn_{x}_exps.weight", np.stack([w[p + f"mlp.experts.{e}.{x}_proj.weight"] for e in range(E)]))
        add(b + f"ffn_{x}_shexp.weight", w[p + f"mlp.shared_experts.{x}_proj.weight"])
add("output_norm.weight", w["model.norm.weight"])
add("output.weight", w["lm_head.weight"])

g.write_header_to_file()
g.write_kv_data_to_file()
g.write_tensors_to_file()
g.close()
