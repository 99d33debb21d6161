"""Independent plain-PyTorch reference of the DeepSeekMoE model (HF model_type "deepseek", the
semantics of the official `modeling_deepseek.py` shipped with deepseek-moe-16b-base), written from
docs/reference semantics (tests/oracle is the oracle the C++ engine is checked against).

Structure and parameter names follow the HF checkpoint exactly (model.embed_tokens.weight,
model.layers.N.self_attn.q_proj.weight, model.layers.N.mlp.gate.weight, ...), so
`named_parameters()` yields the checkpoint names.

Deliberate differences from the official code, all about precision only (the oracle runs in float64):
  * RMSNorm, attention softmax and rotary tables are computed in promote(dtype, float32): fp32 for
    fp32/bf16 models exactly as the official code, but float64 stays float64 (the official code
    would downcast a float64 model to fp32 there).
  * The seq_aux expert-count tensor `ce` is created in the scores' dtype (official: default dtype fp32).
  * Logits are promote(dtype, float32) (official: `.float()`).

dsmoe extensions (config keys of ours, absent = default):
  * "router_type": "softmax_topk" (default) | "hash" (Hash Layer: top-1 expert = hash(token id) %
    n_routed_experts, gate 1.0, no router weight, no aux loss).
  * "n_device_groups" D (default 1), "device_aux_alpha" a2 (default 0.0): device-level balance loss.
  * DeepSeek-V2 (HF DeepseekV2Config names): "topk_method" "greedy" (default) | "group_limited_greedy"
    with "n_group", "topk_group" (device-limited routing, as the official V2 MoEGate: a group's score
    is its best expert's, keep the topk_group best groups, the other experts' scores masked to 0,
    then top-k); "comm_aux_alpha" a3 (default 0.0): the communication balance loss over the D devices,
    a3 * sum_d f''_d P'_d with f''_d = D/(M T) * #tokens sending to device d, M = min(k, D, the
    topk_group widest device spans of the groups) (dsmoe's definition, ModelConfig::comm_device_limit).
  * "capacity_factor" cf (default 0 = dropless), training only: slots (token, expert) are ranked by
    their softmax score (ties: lower token, then the token's higher-ranked slot) within each unit
    (a device when D > 1, else an expert), and each unit keeps its first ceil(cf * B*T*k / units);
    a dropped slot contributes nothing (the kept gates are not renormalised). f, f'' count all
    choices, dropped or not.

Evaluation-only routing override (the paper's expert-specialization analyses, section 4.5), set with
DeepseekForCausalLM.set_routing_override(disable_top, top_k, drop_shared): per token the `disable_top`
experts of highest softmax score are masked out (-inf) and top-k is taken over the rest with k = top_k
(0 = num_experts_per_tok); gates are the chosen experts' softmax scores over ALL routed experts,
renormalised only when norm_topk_prob and k > 1; drop_shared skips the shared experts. Training-mode
forwards refuse an active override.

bf16 GEMM inputs (dsmoe's training.precision "bf16", src/ops/matmul.h), set with
set_gemm_inputs("bf16"): every projection (q/k/v/o, the MLPs and experts, the router, lm_head; not the
attention score and value products, which dsmoe keeps fp32) rounds both inputs of its forward product
and of both backward products (dX = dY W, dW = dY^T X) to bf16, round-to-nearest-even through fp32
(`.float().bfloat16()`, what dsmoe rounds: fp32 values), then multiplies them in float64. The default
"exact" is plain F.linear in float64.

Torch 1.13 compatible (no scaled_dot_product_attention, no nn.RMSNorm).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------

# Hugging Face DeepseekConfig defaults for absent keys.
HF_DEFAULTS = {
    "vocab_size": 102400,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "moe_intermediate_size": 1407,
    "num_hidden_layers": 30,
    "num_attention_heads": 32,
    "num_key_value_heads": None,  # -> num_attention_heads
    "n_shared_experts": None,
    "n_routed_experts": None,
    "num_experts_per_tok": None,
    "moe_layer_freq": 1,
    "first_k_dense_replace": 0,
    "norm_topk_prob": False,
    "scoring_func": "softmax",
    "aux_loss_alpha": 0.001,
    "seq_aux": True,
    "hidden_act": "silu",
    "max_position_embeddings": 2048,
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "attention_bias": False,
    # dsmoe extensions
    "router_type": "softmax_topk",
    "n_device_groups": 1,
    "device_aux_alpha": 0.0,
    "topk_method": "greedy",
    "n_group": None,   # HF DeepseekV2Config: None -> one group
    "topk_group": None,
    "comm_aux_alpha": 0.0,
    "capacity_factor": 0.0,
}


class DeepseekConfig:
    def __init__(self, d):
        merged = dict(HF_DEFAULTS)
        for k, v in d.items():
            merged[k] = v
        for k, v in merged.items():
            setattr(self, k, v)
        self.raw = d
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if not self.n_shared_experts:  # null / 0 -> no shared experts
            self.n_shared_experts = None
        if self.hidden_act != "silu":
            raise ValueError("only hidden_act silu is supported")
        if self.scoring_func != "softmax":
            raise ValueError("only scoring_func softmax is supported (as the official code)")
        if self.tie_word_embeddings:
            raise ValueError("tie_word_embeddings must be false")
        if self.attention_bias:
            raise ValueError("attention_bias must be false")
        if self.rope_scaling is not None:
            raise ValueError("rope_scaling is not supported")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be divisible by num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be divisible by num_key_value_heads")
        if self.router_type not in ("softmax_topk", "hash"):
            raise ValueError("router_type must be softmax_topk or hash")
        if self.n_routed_experts is not None:
            if self.router_type == "hash":
                if self.num_experts_per_tok is None:
                    self.num_experts_per_tok = 1
                if self.num_experts_per_tok != 1:
                    raise ValueError("router_type hash is top-1: num_experts_per_tok must be 1")
            if self.num_experts_per_tok is None or not (1 <= self.num_experts_per_tok <= self.n_routed_experts):
                raise ValueError("num_experts_per_tok must be in [1, n_routed_experts]")
            if self.n_routed_experts % self.n_device_groups:
                raise ValueError("n_routed_experts must be divisible by n_device_groups")
        if self.topk_method not in ("greedy", "group_limited_greedy"):
            raise ValueError("topk_method must be greedy or group_limited_greedy")
        self.n_group = self.n_group or 1
        self.topk_group = self.topk_group or 1
        if self.topk_method == "group_limited_greedy":
            if self.router_type != "softmax_topk":
                raise ValueError("group_limited_greedy needs the softmax router")
            if self.n_routed_experts % self.n_group or not (1 <= self.topk_group <= self.n_group):
                raise ValueError("n_group must divide n_routed_experts and 1 <= topk_group <= n_group")
            if self.topk_group * (self.n_routed_experts // self.n_group) < self.num_experts_per_tok:
                raise ValueError("topk_group groups must hold at least num_experts_per_tok experts")

    def is_moe_layer(self, i):
        return (self.n_routed_experts is not None and i >= self.first_k_dense_replace
                and i % self.moe_layer_freq == 0)

    @property
    def expert_aux_active(self):
        return self.router_type == "softmax_topk" and self.aux_loss_alpha > 0.0

    @property
    def device_aux_active(self):
        return self.router_type == "softmax_topk" and self.device_aux_alpha > 0.0

    def comm_device_limit(self):
        """M: min(k, D), and under device-limited routing at most the topk_group widest groups' device
        spans together (a group's span: how many of the D contiguous devices its experts lie on)."""
        n, D, k = self.n_routed_experts, self.n_device_groups, self.num_experts_per_tok
        M = min(k, D)
        if self.topk_method == "group_limited_greedy":
            per_group, per_device = n // self.n_group, n // D
            spans = sorted((len({e // per_device for e in range(g * per_group, (g + 1) * per_group)})
                            for g in range(self.n_group)), reverse=True)
            M = min(M, sum(spans[:self.topk_group]))
        return M


_GEMM_INPUTS = "exact"


def set_gemm_inputs(mode):
    """"exact" (default) or "bf16": what every projection's products take (see the module docstring)."""
    global _GEMM_INPUTS
    if mode not in ("exact", "bf16"):
        raise ValueError(f"gemm inputs must be 'exact' or 'bf16', got {mode!r}")
    _GEMM_INPUTS = mode


def _bf16(t):
    """t rounded to bf16 (nearest even, through fp32 as dsmoe holds it), back in t's dtype."""
    return t.float().bfloat16().to(t.dtype)


class _Bf16Linear(torch.autograd.Function):
    """y = bf16(x) bf16(w)^T; backward dx = bf16(g) bf16(w), dw = bf16(g)^T bf16(x): each product of
    bf16-rounded inputs, computed in the inputs' dtype (float64). Not the derivative of the forward
    (rounding has none): the products a bf16 mixed-precision engine computes."""

    @staticmethod
    def forward(ctx, x, w):
        xb, wb = _bf16(x), _bf16(w)
        ctx.save_for_backward(xb, wb)
        return xb @ wb.t()

    @staticmethod
    def backward(ctx, g):
        xb, wb = ctx.saved_tensors
        gb = _bf16(g)
        dx = gb @ wb
        dw = gb.reshape(-1, gb.shape[-1]).t() @ xb.reshape(-1, xb.shape[-1])
        return dx, dw


def project(x, w):
    """x w^T (no bias), with the inputs set_gemm_inputs chose."""
    if _GEMM_INPUTS == "bf16":
        return _Bf16Linear.apply(x, w)
    return F.linear(x, w, None)


class Projection(nn.Linear):
    """nn.Linear without bias whose product is project() (same parameter names and init)."""

    def __init__(self, in_features, out_features, bias=False):
        assert not bias
        super().__init__(in_features, out_features, bias=False)

    def forward(self, x):
        return project(x, self.weight)


def _compute_dtype(dtype):
    """At least fp32 (official: fp32), but float64 stays float64."""
    return torch.promote_types(dtype, torch.float32)


# ----------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------

class DeepseekRMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(_compute_dtype(input_dtype))
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


class DeepseekRotaryEmbedding(nn.Module):
    """cos/sin tables, HALF-SPLIT convention: emb = cat(freqs, freqs)."""

    def __init__(self, dim, base=10000.0):
        super().__init__()
        self.dim = dim
        self.base = base

    def forward(self, seq_len, dtype):
        cdt = _compute_dtype(dtype)
        inv_freq = 1.0 / (self.base ** (torch.arange(0, self.dim, 2, dtype=cdt) / self.dim))
        t = torch.arange(seq_len, dtype=cdt)
        freqs = torch.outer(t, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin, position_ids):
    # q, k: [bsz, heads, seq, head_dim]; cos/sin: [seq_len, head_dim]; position_ids: [bsz, seq]
    cos = cos[position_ids].unsqueeze(1)  # [bsz, 1, seq, head_dim]
    sin = sin[position_ids].unsqueeze(1)
    q_embed = (q * cos) + (rotate_half(q) * sin)
    k_embed = (k * cos) + (rotate_half(k) * sin)
    return q_embed, k_embed


def repeat_kv(hidden_states, n_rep):
    """[b, kv_heads, s, d] -> [b, kv_heads * n_rep, s, d]; query head h uses kv head h // n_rep."""
    batch, num_key_value_heads, slen, head_dim = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    hidden_states = hidden_states[:, :, None, :, :].expand(batch, num_key_value_heads, n_rep, slen, head_dim)
    return hidden_states.reshape(batch, num_key_value_heads * n_rep, slen, head_dim)


class DeepseekAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.hidden_size = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.hidden_size // self.num_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.q_proj = Projection(self.hidden_size, self.num_heads * self.head_dim, bias=False)
        self.k_proj = Projection(self.hidden_size, self.num_key_value_heads * self.head_dim, bias=False)
        self.v_proj = Projection(self.hidden_size, self.num_key_value_heads * self.head_dim, bias=False)
        self.o_proj = Projection(self.num_heads * self.head_dim, self.hidden_size, bias=False)
        self.rotary_emb = DeepseekRotaryEmbedding(self.head_dim, base=config.rope_theta)

    def forward(self, hidden_states, position_ids):
        bsz, q_len, _ = hidden_states.size()
        q = self.q_proj(hidden_states).view(bsz, q_len, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(hidden_states).view(bsz, q_len, self.num_key_value_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(hidden_states).view(bsz, q_len, self.num_key_value_heads, self.head_dim).transpose(1, 2)

        cos, sin = self.rotary_emb(int(position_ids.max().item()) + 1, dtype=v.dtype)
        q, k = apply_rotary_pos_emb(q, k, cos, sin, position_ids)

        k = repeat_kv(k, self.num_key_value_groups)
        v = repeat_kv(v, self.num_key_value_groups)

        attn_weights = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(self.head_dim)
        causal = torch.ones(q_len, q_len, dtype=torch.bool).triu(1)  # True above the diagonal = masked
        attn_weights = attn_weights.masked_fill(causal, float("-inf"))
        attn_weights = F.softmax(attn_weights, dim=-1, dtype=_compute_dtype(q.dtype)).to(q.dtype)
        attn_output = torch.matmul(attn_weights, v)  # [bsz, heads, q_len, head_dim]
        attn_output = attn_output.transpose(1, 2).contiguous().reshape(bsz, q_len, self.hidden_size)
        return self.o_proj(attn_output)


class DeepseekMLP(nn.Module):
    def __init__(self, config, hidden_size=None, intermediate_size=None):
        super().__init__()
        self.hidden_size = config.hidden_size if hidden_size is None else hidden_size
        self.intermediate_size = config.intermediate_size if intermediate_size is None else intermediate_size
        self.gate_proj = Projection(self.hidden_size, self.intermediate_size, bias=False)
        self.up_proj = Projection(self.hidden_size, self.intermediate_size, bias=False)
        self.down_proj = Projection(self.intermediate_size, self.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class AddAuxiliaryLoss(torch.autograd.Function):
    """Returns x unchanged; in backward passes grad_output through and gives `loss` gradient 1."""

    @staticmethod
    def forward(ctx, x, loss):
        assert loss.numel() == 1
        ctx.dtype = loss.dtype
        ctx.shape = loss.shape
        ctx.required_aux_loss = loss.requires_grad
        return x

    @staticmethod
    def backward(ctx, grad_output):
        grad_loss = None
        if ctx.required_aux_loss:
            grad_loss = torch.ones(ctx.shape, dtype=ctx.dtype, device=grad_output.device)
        return grad_output, grad_loss


# ----------------------------------------------------------------------------------------------
# Routing
# ----------------------------------------------------------------------------------------------

def hash_u32(token_id):
    """Bit-exact 32-bit integer hash of a token id (Python ints, masked to 32 bits)."""
    h = int(token_id) & 0xFFFFFFFF
    h ^= h >> 16
    h = (h * 0x7FEB352D) & 0xFFFFFFFF
    h ^= h >> 15
    h = (h * 0x846CA68B) & 0xFFFFFFFF
    h ^= h >> 16
    return h


def hash_expert_ids(input_ids, n_routed_experts):
    """[...] int tensor of token ids -> same-shape int64 tensor of expert ids."""
    flat = input_ids.reshape(-1).tolist()
    cache = {}
    out = []
    for t in flat:
        if t not in cache:
            cache[t] = hash_u32(t) % n_routed_experts
        out.append(cache[t])
    return torch.tensor(out, dtype=torch.long).view(input_ids.shape)


class MoEGate(nn.Module):
    """Official softmax top-k router with the expert-level aux loss, plus dsmoe's device-level loss."""

    def __init__(self, config):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.n_routed_experts = config.n_routed_experts
        self.alpha = config.aux_loss_alpha
        self.seq_aux = config.seq_aux
        self.norm_topk_prob = config.norm_topk_prob
        self.n_device_groups = config.n_device_groups
        self.device_alpha = config.device_aux_alpha
        self.topk_method = config.topk_method
        self.n_group = config.n_group
        self.topk_group = config.topk_group
        self.comm_alpha = config.comm_aux_alpha
        self.comm_M = config.comm_device_limit() if config.n_routed_experts else 1
        self.capacity_factor = config.capacity_factor
        self.comm_aux_loss = None
        self.keep = None  # [tokens, k] 1/0 slots kept by the capacity limit (None: dropless)
        self.weight = nn.Parameter(torch.empty(self.n_routed_experts, config.hidden_size))
        nn.init.normal_(self.weight, std=config.initializer_range)
        self.last = {}
        self.disable_top = 0   # evaluation-only routing override (see the module docstring)
        self.override_k = 0

    def capacity_keep(self, idx, score):
        return capacity_keep(idx, score, self.n_routed_experts, self.n_device_groups, self.capacity_factor)

    def forward(self, hidden_states):
        bsz, seq_len, h = hidden_states.shape
        hidden_states = hidden_states.view(-1, h)
        logits = project(hidden_states, self.weight)
        scores = logits.softmax(dim=-1)
        k = self.override_k or self.top_k
        ranked = scores  # what top-k ranks: the scores, masked to 0 outside the kept groups (V2)
        group_scores = None
        if self.topk_method == "group_limited_greedy":
            if self.disable_top:
                raise ValueError("disable_top with group_limited_greedy routing")
            n_tok = scores.shape[0]
            group_scores = scores.view(n_tok, self.n_group, -1).max(dim=-1).values  # [n, n_group]
            group_idx = torch.topk(group_scores, k=self.topk_group, dim=-1, sorted=False)[1]
            group_mask = torch.zeros_like(group_scores)
            group_mask.scatter_(1, group_idx, 1)
            score_mask = group_mask.unsqueeze(-1).expand(
                n_tok, self.n_group, self.n_routed_experts // self.n_group).reshape(n_tok, -1)
            ranked = scores.masked_fill(~score_mask.bool(), 0.0)
        if self.topk_method == "group_limited_greedy" and self.disable_top == 0:
            if self.override_k and self.training:
                raise RuntimeError("routing override in training mode: overrides are for evaluation only")
            topk_weight, topk_idx = torch.topk(ranked, k=k, dim=-1, sorted=False)
        elif self.disable_top == 0 and self.override_k == 0:
            topk_weight, topk_idx = torch.topk(scores, k=self.top_k, dim=-1, sorted=False)
        else:
            if self.training:
                raise RuntimeError("routing override in training mode: overrides are for evaluation only")
            masked = scores
            if self.disable_top > 0:
                _, top_idx = torch.topk(scores, k=self.disable_top, dim=-1)
                masked = scores.scatter(-1, top_idx, float("-inf"))
            _, topk_idx = torch.topk(masked, k=k, dim=-1, sorted=False)
            topk_weight = torch.gather(scores, -1, topk_idx)  # probabilities over ALL routed experts
        if k > 1 and self.norm_topk_prob:
            denominator = topk_weight.sum(dim=-1, keepdim=True) + 1e-20
            topk_weight = topk_weight / denominator

        raw_topk_weight = torch.gather(scores, -1, topk_idx)  # the affinities the capacity ranks by

        aux_loss = None
        device_aux_loss = None
        self.comm_aux_loss = None
        need_aux = self.training and self.alpha > 0.0
        need_dev = self.training and self.device_alpha > 0.0
        if self.training and self.comm_alpha > 0.0:
            n, D, M = self.n_routed_experts, self.n_device_groups, self.comm_M
            n_tok = topk_idx.shape[0]
            hit = torch.zeros(n_tok, D, dtype=scores.dtype)
            hit.scatter_(1, topk_idx // (n // D), 1.0)  # token t sends to device d (once, however many slots)
            P_dev = scores.view(n_tok, D, n // D).sum(dim=-1)  # [n_tok, D]
            if self.seq_aux:
                f2 = hit.view(bsz, seq_len, D).sum(dim=1) * D / (M * seq_len)
                P2 = P_dev.view(bsz, seq_len, D).mean(dim=1)
                self.comm_aux_loss = (f2 * P2).sum(dim=1).mean() * self.comm_alpha
            else:
                f2 = hit.sum(dim=0) * D / (M * n_tok)
                self.comm_aux_loss = (f2 * P_dev.mean(dim=0)).sum() * self.comm_alpha
        if need_aux or need_dev:
            n = self.n_routed_experts
            topk_idx_for_aux_loss = topk_idx.view(bsz, -1)  # [bsz, seq_len * top_k]
            if self.seq_aux:
                scores_for_seq_aux = scores.view(bsz, seq_len, -1)
                ce = torch.zeros(bsz, n, dtype=scores.dtype, device=hidden_states.device)
                ce.scatter_add_(1, topk_idx_for_aux_loss,
                                torch.ones(bsz, seq_len * self.top_k, dtype=scores.dtype,
                                           device=hidden_states.device))
                ce.div_(seq_len * self.top_k / n)       # f_i per sequence  [bsz, n]
                Pi = scores_for_seq_aux.mean(dim=1)      # P_i per sequence  [bsz, n]
                if need_aux:
                    aux_loss = (ce * Pi).sum(dim=1).mean() * self.alpha
                if need_dev:
                    g = self.n_device_groups
                    f_dev = ce.view(bsz, g, n // g).mean(dim=-1)
                    P_dev = Pi.view(bsz, g, n // g).sum(dim=-1)
                    device_aux_loss = (f_dev * P_dev).sum(dim=1).mean() * self.device_alpha
            else:
                mask_ce = F.one_hot(topk_idx_for_aux_loss.view(-1), num_classes=n)
                ce = mask_ce.to(scores.dtype).mean(0)
                Pi = scores.mean(0)
                fi = ce * n
                if need_aux:
                    aux_loss = (Pi * fi).sum() * self.alpha
                if need_dev:
                    g = self.n_device_groups
                    f_dev = fi.view(g, n // g).mean(dim=-1)
                    P_dev = Pi.view(g, n // g).sum(dim=-1)
                    device_aux_loss = (f_dev * P_dev).sum() * self.device_alpha

        # diagnostics for the oracle (no effect on the computation)
        with torch.no_grad():
            # The chosen set is the score ranks [disable_top, disable_top + k) (of the group-masked
            # scores under device-limited routing): it is decided by the gaps at both rank boundaries
            # (only the upper one without an override), and by the gap between the topk_group-th and
            # the next group score.
            n = self.n_routed_experts
            sw, si = torch.topk(ranked, k=min(self.disable_top + k + 1, n), dim=-1, sorted=True)
            margin = torch.full((scores.shape[0],), float("inf"), dtype=scores.dtype)
            for b in (self.disable_top, self.disable_top + k):
                if 0 < b < n:
                    margin = torch.minimum(margin, sw[:, b - 1] - sw[:, b])
            if group_scores is not None and self.topk_group < self.n_group:
                gw = torch.topk(group_scores, k=self.topk_group + 1, dim=-1, sorted=True).values
                margin = torch.minimum(margin, gw[:, self.topk_group - 1] - gw[:, self.topk_group])
            order = torch.argsort(torch.gather(scores, 1, topk_idx), dim=-1, descending=True)
            self.keep = None
            if self.training and self.capacity_factor > 0:
                self.keep, cap_margin = self.capacity_keep(torch.gather(topk_idx, 1, order),
                                                           torch.gather(raw_topk_weight, 1, order))
                self.keep = torch.gather(self.keep, 1, torch.argsort(order, dim=-1))  # back to topk_idx's order
                margin = torch.minimum(margin, torch.full_like(margin, cap_margin))
            self.last = {
                "idx": torch.gather(topk_idx, 1, order),
                "weight": torch.gather(topk_weight, 1, order).detach(),
                "scores": scores.detach(),
                "margin": margin,
            }
            if self.keep is not None:
                self.last["keep"] = torch.gather(self.keep, 1, order)
        return topk_idx, topk_weight, aux_loss, device_aux_loss


def capacity_keep(idx, score, n_experts, n_devices, capacity_factor):
    """The slots [tokens, k] (sorted by descending score within each token) that survive the capacity:
    per unit (device when n_devices > 1, else expert) the ceil(cf * tokens * k / units) highest scores,
    ties by lower token then lower slot. Returns (keep [tokens, k] long 1/0, the smallest gap between a
    unit's last kept and first dropped score: inf when nothing is dropped)."""
    n_tok, k = idx.shape
    units = n_devices if n_devices > 1 else n_experts
    unit = idx // (n_experts // n_devices) if n_devices > 1 else idx
    cap = math.ceil(capacity_factor * n_tok * k / units)
    keep = torch.zeros(n_tok, k, dtype=torch.long)
    gap = float("inf")
    per_unit = {}
    for t in range(n_tok):
        for j in range(k):
            per_unit.setdefault(int(unit[t, j]), []).append((-float(score[t, j]), t, j))
    for u, slots in per_unit.items():
        slots.sort()
        for _, t, j in slots[:cap]:
            keep[t, j] = 1
        if len(slots) > cap > 0:
            gap = min(gap, slots[cap][0] - slots[cap - 1][0])
    return keep, gap


class HashGate(nn.Module):
    """Hash Layer router: no parameters, top-1 by a fixed hash of the token id, gate 1.0."""

    def __init__(self, config):
        super().__init__()
        self.top_k = 1
        self.n_routed_experts = config.n_routed_experts
        self.last = {}

    def forward(self, hidden_states, input_ids):
        bsz, seq_len, h = hidden_states.shape
        topk_idx = hash_expert_ids(input_ids, self.n_routed_experts).view(-1, 1).to(hidden_states.device)
        topk_weight = torch.ones(bsz * seq_len, 1, dtype=hidden_states.dtype, device=hidden_states.device)
        self.last = {"idx": topk_idx, "weight": topk_weight}
        return topk_idx, topk_weight, None, None


class DeepseekMoE(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.num_experts_per_tok = config.num_experts_per_tok
        self.experts = nn.ModuleList([DeepseekMLP(config, intermediate_size=config.moe_intermediate_size)
                                      for _ in range(config.n_routed_experts)])
        if config.router_type == "hash":
            self.gate = HashGate(config)
        else:
            self.gate = MoEGate(config)
        if config.n_shared_experts is not None:
            self.shared_experts = DeepseekMLP(
                config, intermediate_size=config.moe_intermediate_size * config.n_shared_experts)
        self.inject_aux = True  # False: the check script gets the aux losses in-graph instead
        self.drop_shared = False  # evaluation-only routing override
        self.last_aux = None
        self.last_device_aux = None
        self.last_comm_aux = None

    def forward(self, hidden_states, input_ids):
        if self.drop_shared and self.training:
            raise RuntimeError("drop_shared in training mode: overrides are for evaluation only")
        identity = hidden_states
        orig_shape = hidden_states.shape
        if isinstance(self.gate, HashGate):
            topk_idx, topk_weight, aux_loss, device_aux_loss = self.gate(hidden_states, input_ids)
        else:
            topk_idx, topk_weight, aux_loss, device_aux_loss = self.gate(hidden_states)
        self.last_aux, self.last_device_aux = aux_loss, device_aux_loss
        self.last_comm_aux = None
        hidden_states = hidden_states.view(-1, hidden_states.shape[-1])
        flat_topk_idx = topk_idx.view(-1)
        if self.training:
            k = topk_idx.shape[-1]
            hidden_states = hidden_states.repeat_interleave(k, dim=0)
            y = torch.empty_like(hidden_states)
            for i, expert in enumerate(self.experts):
                y[flat_topk_idx == i] = expert(hidden_states[flat_topk_idx == i])
            w = topk_weight
            keep = getattr(self.gate, "keep", None)
            if keep is not None:
                w = w * keep.to(w.dtype)  # a dropped slot contributes nothing
            y = (y.view(*topk_weight.shape, -1) * w.unsqueeze(-1)).sum(dim=1)
            y = y.view(*orig_shape)
            comm_aux_loss = getattr(self.gate, "comm_aux_loss", None)
            self.last_comm_aux = comm_aux_loss
            if self.inject_aux:
                if aux_loss is not None:
                    y = AddAuxiliaryLoss.apply(y, aux_loss)
                if device_aux_loss is not None:
                    y = AddAuxiliaryLoss.apply(y, device_aux_loss)
                if comm_aux_loss is not None:
                    y = AddAuxiliaryLoss.apply(y, comm_aux_loss)
        else:
            y = self.moe_infer(hidden_states, flat_topk_idx, topk_weight.view(-1, 1)).view(*orig_shape)
        if self.config.n_shared_experts is not None and not self.drop_shared:
            y = y + self.shared_experts(identity)
        return y

    @torch.no_grad()
    def moe_infer(self, x, flat_expert_indices, flat_expert_weights):
        """Inference dispatch: group the (token, slot) pairs by expert, run each expert once on its
        contiguous slice, scale by the gate and scatter-add back to the token rows."""
        out = torch.zeros_like(x)
        k = flat_expert_indices.numel() // x.shape[0]
        order = flat_expert_indices.argsort()
        counts = torch.bincount(flat_expert_indices, minlength=len(self.experts)).tolist()
        token_of_slot = order // k
        start = 0
        for i, cnt in enumerate(counts):
            if cnt == 0:
                continue
            slots = order[start:start + cnt]
            toks = token_of_slot[start:start + cnt]
            eo = self.experts[i](x[toks]) * flat_expert_weights[slots]
            out.index_add_(0, toks, eo)
            start += cnt
        return out


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------

class DeepseekDecoderLayer(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.self_attn = DeepseekAttention(config)
        self.is_moe = config.is_moe_layer(layer_idx)
        self.mlp = DeepseekMoE(config) if self.is_moe else DeepseekMLP(config)
        self.input_layernorm = DeepseekRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = DeepseekRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden_states, position_ids, input_ids):
        residual = hidden_states
        hidden_states = self.input_layernorm(hidden_states)
        hidden_states = self.self_attn(hidden_states, position_ids)
        hidden_states = residual + hidden_states

        residual = hidden_states
        hidden_states = self.post_attention_layernorm(hidden_states)
        if self.is_moe:
            hidden_states = self.mlp(hidden_states, input_ids)
        else:
            hidden_states = self.mlp(hidden_states)
        return residual + hidden_states


class DeepseekModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([DeepseekDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = DeepseekRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, input_ids):
        bsz, seq_len = input_ids.shape
        position_ids = torch.arange(seq_len, dtype=torch.long).unsqueeze(0).expand(bsz, seq_len)
        hidden_states = self.embed_tokens(input_ids)
        for layer in self.layers:
            hidden_states = layer(hidden_states, position_ids, input_ids)
        return self.norm(hidden_states)


class DeepseekForCausalLM(nn.Module):
    def __init__(self, config):
        super().__init__()
        if isinstance(config, dict):
            config = DeepseekConfig(config)
        self.config = config
        self.model = DeepseekModel(config)
        self.lm_head = Projection(config.hidden_size, config.vocab_size, bias=False)

    def forward(self, input_ids, targets=None):
        """input_ids [B, T] -> logits [B, T, V] (>= fp32) and, if targets [B, T] are given, the mean
        cross-entropy over all B*T targets. The aux losses are NOT in this loss: in training mode they
        reach the gradient through AddAuxiliaryLoss (see aux_losses())."""
        hidden_states = self.model(input_ids)
        logits = self.lm_head(hidden_states)
        logits = logits.to(_compute_dtype(logits.dtype))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, self.config.vocab_size), targets.reshape(-1))
        return logits, loss

    def moe_layers(self):
        return [(i, l.mlp) for i, l in enumerate(self.model.layers) if l.is_moe]

    def aux_losses(self):
        """{layer: (expert_aux or None, device_aux or None)} from the last forward."""
        return {i: (m.last_aux, m.last_device_aux) for i, m in self.moe_layers()}

    def comm_losses(self):
        """{layer: comm_aux or None} from the last forward (kept apart from aux_losses' pairs)."""
        return {i: m.last_comm_aux for i, m in self.moe_layers()}

    def set_routing_override(self, disable_top=0, top_k=0, drop_shared=False):
        """Evaluation-only routing override of every MoE layer (see the module docstring); all zero /
        False restores the config's routing."""
        c = self.config
        active = disable_top != 0 or top_k != 0 or drop_shared
        if active and c.n_routed_experts is None:
            raise ValueError("routing override on a dense model")
        if disable_top < 0 or top_k < 0:
            raise ValueError("disable_top and top_k must be >= 0")
        if c.router_type == "hash" and (disable_top or top_k):
            raise ValueError("router_type hash: only drop_shared applies")
        if active and disable_top + (top_k or c.num_experts_per_tok) > c.n_routed_experts:
            raise ValueError("disable_top + top_k must be <= n_routed_experts")
        if drop_shared and c.n_shared_experts is None:
            raise ValueError("drop_shared without shared experts")
        for _, m in self.moe_layers():
            if isinstance(m.gate, MoEGate):
                m.gate.disable_top, m.gate.override_k = disable_top, top_k
            m.drop_shared = drop_shared

    def set_inject_aux(self, flag):
        for _, m in self.moe_layers():
            m.inject_aux = flag
