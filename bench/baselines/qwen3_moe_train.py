#!/usr/bin/env python3
"""bench/baselines/qwen3_moe_train.py — the PyTorch baseline of `fp4qat train` (issue 25, item 1):
the same Qwen3-MoE, the same data and the same optimizer, written as a strong PyTorch user writes it
(torchtitan's way), so that whole training steps can be compared (tokens/s, memory) and so that
its loss can be checked against fp4qat's (tests/scripts/test_baseline_loss.py, on the CPU in CI).

Model (Hugging Face parameter names; the experts stored stacked as transformers 5 does,
`mlp.experts.gate_up_proj` [E, 2I, H] with the gate rows first and `mlp.experts.down_proj`
[E, H, I], all weights [out, in]):
  embeddings -> per layer: RMSNorm -> attention (q/k/v/o, RMSNorm on q and k per head, RoPE with
  rotate-half, grouped-query `F.scaled_dot_product_attention`, causal) -> residual -> RMSNorm ->
  MoE (router linear, softmax in fp32, top-k, renormalised when norm_topk_prob, tokens permuted
  by expert, SwiGLU experts through `torch._grouped_mm` with device-side offsets, weighted sum
  over the k slots) or a dense SwiGLU MLP (mlp_only_layers, decoder_sparse_step) -> residual ->
  RMSNorm -> lm_head (or the tied embeddings).
  Load balancing: the Switch loss E * sum_e f_e * P_e per MoE layer (f_e: share of the routed
  slots, P_e: mean router probability; over the non-padding tokens on a dataset folder), averaged
  over the MoE layers.

Loss, as fp4qat computes it (trainer/train.cpp train_step):
  token file:      per micro-batch ce = mean next-token cross entropy (fp32 logits);
                   objective = ce / grad_accum + router_aux_loss_coef * aux / grad_accum
  dataset folder:  ce = sum of the cross entropy over the loss targets (objective sft: mask.bin's;
                   lm: every target inside a document), divided by the step's number of targets;
                   objective = that + router_aux_loss_coef * aux / grad_accum
  The logged `loss` is the cross entropy alone (no aux), `aux_loss` the aux loss without its
  coefficient, both averaged over the micro-batches, as in fp4qat's metrics.jsonl.

Data: a flat token file (magic FP4QTOK1) or a prepared dataset folder (scripts/prepare_data,
docs/data-format.md), batched exactly as fp4qat batches them (trainer/data.cpp: the same windows /
documents from (train.seed, split, batch index)), so that both see the same tokens at every step.

Optimizer: AdamW (fused on CUDA) with weight decay on the matrices only, global-norm clipping,
linear warmup then cosine decay to lr * min_lr_ratio: fp4qat's trainer/adamw.cpp, with its
defaults. Precision: fp32 on the CPU; on CUDA fp32 master weights with BF16 autocast (the
weights cast to BF16 for every GEMM, the residual stream in BF16, norms and softmax in fp32).

Weights: from a Hugging Face folder (config.json + safetensors, per-expert names
`model.layers.L.mlp.experts.E.{gate,up,down}_proj.weight` as fp4qat writes them, or stacked ones),
or with --init-seed S the initialisation of `fp4qat train` with train.seed S (torch.randn on a CPU
generator seeded S, parameter by parameter in fp4qat's order, times 0.02; norms 1): the same
weights bit for bit. The shape comes from --model: a folder's config.json, a config.json file or a
model YAML of configs/.

usage:
  qwen3_moe_train.py --model HF_DIR_OR_CONFIG --tokens FILE_OR_DATASET [--init-seed S]
                     [--recipe R.yaml] [--steps N] [--batch-size B] [--seq-len T] [--grad-accum G]
                     [--device auto|cpu|cuda] [--dtype auto|fp32|bf16] [--compile | --no-compile]
                     [--experts auto|grouped_mm|loop] [--json OUT] ...
  --recipe reads an fp4qat recipe or a run's resolved config.yaml for train.*, optim.*, data.* and
  objective (flags given explicitly win). Prints one line per step (loss, aux, lr, |g|, tokens/s).
"""
import argparse
import json
import math
import os
import struct
import time
from dataclasses import dataclass, field, fields

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------
# Model shape (model/config.h: the config.json names)


@dataclass
class Qwen3MoeConfig:
    vocab_size: int = 512
    hidden_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 32
    intermediate_size: int = 256
    moe_intermediate_size: int = 64
    num_experts: int = 8
    num_experts_per_tok: int = 2
    norm_topk_prob: bool = True
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e6
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    mlp_only_layers: list = field(default_factory=list)
    decoder_sparse_step: int = 1
    router_aux_loss_coef: float = 0.001

    @staticmethod
    def from_dict(d):
        """config.json (transformers 4 or 5 names) or an fp4qat model YAML, as read_hf_config reads it."""
        c = Qwen3MoeConfig()
        names = {f.name for f in fields(c)}
        for k, v in d.items():
            if k in names and k != "head_dim":
                setattr(c, k, v)
        c.head_dim = d.get("head_dim", c.hidden_size // c.num_attention_heads)
        if "num_local_experts" in d:  # transformers 5
            c.num_experts = d["num_local_experts"]
        rp = d.get("rope_parameters")
        if isinstance(rp, dict) and "rope_theta" in rp:
            c.rope_theta = rp["rope_theta"]
        c.mlp_only_layers = list(c.mlp_only_layers or [])
        for k in ("rms_norm_eps", "rope_theta", "router_aux_loss_coef"):
            setattr(c, k, float(getattr(c, k)))
        return c

    def is_moe_layer(self, i):
        return i not in self.mlp_only_layers and self.num_experts > 0 and (i + 1) % self.decoder_sparse_step == 0


def _scalar(v):
    v = v.split(" #")[0].strip()
    if v.startswith("[") and v.endswith("]"):
        return [_scalar(x) for x in v[1:-1].split(",") if x.strip()]
    if v in ("true", "false"):
        return v == "true"
    if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
        return v[1:-1]
    for t in (int, float):
        try:
            return t(v)
        except ValueError:
            pass
    return v


def load_yaml(path):
    """PyYAML when installed; else the subset fp4qat's configs and recipes use (mappings two levels
    deep, scalars, flow lists), so that a GPU machine's bare python runs this file."""
    try:
        import yaml
    except ImportError:
        yaml = None
    with open(path) as f:
        text = f.read()
    if yaml is not None:
        return yaml.safe_load(text) or {}
    out, section = {}, None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, _, val = line.strip().partition(":")
        if line[0] in " \t" and section is not None:
            section[key] = _scalar(val)
        elif val.split(" #")[0].strip():
            out[key], section = _scalar(val), None
        else:
            out[key] = section = {}
    return out


def read_config(path):
    """--model: a folder holding config.json, a config.json file, or a model YAML (configs/*.yaml)."""
    p = os.path.join(path, "config.json") if os.path.isdir(path) else path
    if p.endswith((".yaml", ".yml")):
        d = load_yaml(p)
        d = d.get("model", d)
    else:
        with open(p) as f:
            d = json.load(f)
        if d.get("model_type", "qwen3_moe") != "qwen3_moe":
            raise SystemExit(f"{p}: model_type must be qwen3_moe, got {d.get('model_type')}")
    return Qwen3MoeConfig.from_dict(d)


# ---------------------------------------------------------------------------------------------
# The model


class RMSNorm(nn.Module):
    """Hugging Face's Qwen3 RMSNorm: the statistics in fp32, the result cast back, then the weight."""

    def __init__(self, n, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight.to(x.dtype) * y.to(x.dtype)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def rope_tables(cfg, positions, dtype):
    """cos, sin for RoPE: positions int64 [T] -> [T, hd], or [B, T] (packed documents) -> [B, 1, T, hd]."""
    hd = cfg.head_dim
    inv = 1.0 / torch.pow(cfg.rope_theta, torch.arange(0, hd, 2, device=positions.device).float() / hd)
    if positions.dim() == 1:
        freqs = torch.outer(positions.float(), inv)
    else:
        freqs = (positions.float().unsqueeze(-1) * inv).unsqueeze(1)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def sdpa(q, k, v, mask):
    """q [B, nH, T, hd], k/v [B, nKV, T, hd]; causal, or `mask` (bool, True = attend) for packed documents."""
    kw = {"attn_mask": mask} if mask is not None else {"is_causal": True}
    if k.shape[1] != q.shape[1]:
        try:
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kw)
        except TypeError:  # torch < 2.5
            r = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(r, 1), v.repeat_interleave(r, 1)
    return F.scaled_dot_product_attention(q, k, v, **kw)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        H, hd, nH, nKV = cfg.hidden_size, cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
        self.nH, self.nKV, self.hd = nH, nKV, hd
        self.q_proj = nn.Linear(H, nH * hd, bias=False)
        self.k_proj = nn.Linear(H, nKV * hd, bias=False)
        self.v_proj = nn.Linear(H, nKV * hd, bias=False)
        self.o_proj = nn.Linear(nH * hd, H, bias=False)
        self.q_norm = RMSNorm(hd, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(hd, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, mask):
        B, T, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(B, T, self.nH, self.hd)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(B, T, self.nKV, self.hd)).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.nKV, self.hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        o = sdpa(q, k, v, mask)
        return self.o_proj(o.transpose(1, 2).reshape(B, T, self.nH * self.hd))


def grouped_mm_available(device, dt=torch.float32):
    """torch._grouped_mm runs here, forward and backward, in `dt` (CUDA SM >= 80: BF16; the CPU: recent
    torch, 2.11 included)."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    try:
        x = torch.ones(4, 16, device=device, dtype=dt, requires_grad=True)
        w = torch.ones(2, 16, 16, device=device, dtype=dt, requires_grad=True)
        y = torch._grouped_mm(x, w, offs=torch.tensor([1, 4], device=device, dtype=torch.int32))
        y.backward(torch.ones_like(y))
        return True
    except Exception:  # noqa: BLE001 (not built for this device / dtype)
        return False


class Experts(nn.Module):
    """The routed experts, stacked (transformers 5 layout): gate_up_proj [E, 2I, H], down_proj [E, H, I]."""

    def __init__(self, cfg):
        super().__init__()
        E, H, I = cfg.num_experts, cfg.hidden_size, cfg.moe_intermediate_size
        self.I = I
        self.gate_up_proj = nn.Parameter(torch.empty(E, 2 * I, H))
        self.down_proj = nn.Parameter(torch.empty(E, H, I))
        self.impl = "grouped_mm"  # or "loop" (set by Qwen3MoeForCausalLM.set_experts_impl)

    def forward(self, xs, counts):
        """xs [N*k, H] sorted by expert, counts int64 [E] (on xs's device) -> [N*k, H]."""
        # Under autocast the operands of _grouped_mm (which autocast does not cast) are cast here.
        dt = torch.get_autocast_dtype(xs.device.type) if torch.is_autocast_enabled(xs.device.type) else xs.dtype
        xs = xs.to(dt)
        w1, w2 = self.gate_up_proj.to(dt), self.down_proj.to(dt)
        if self.impl == "grouped_mm":
            offs = torch.cumsum(counts, 0).to(torch.int32)  # stays on the device: no host sync
            h = torch._grouped_mm(xs, w1.transpose(-2, -1), offs=offs)
            a = F.silu(h[:, : self.I]) * h[:, self.I:]
            return torch._grouped_mm(a, w2.transpose(-2, -1), offs=offs)
        outs, start = [], 0  # the per-expert loop (where _grouped_mm is not available)
        for e, n in enumerate(counts.tolist()):
            x = xs[start:start + n]
            h = x @ w1[e].t()
            outs.append((F.silu(h[:, : self.I]) * h[:, self.I:]) @ w2[e].t())
            start += n
        return torch.cat(outs, 0)


class SparseMoeBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.E, self.k, self.norm_topk = cfg.num_experts, cfg.num_experts_per_tok, cfg.norm_topk_prob
        self.gate = nn.Linear(cfg.hidden_size, cfg.num_experts, bias=False)
        self.experts = Experts(cfg)

    def forward(self, x3, counted):
        """x3 [B, T, H] -> (out [B, T, H], aux loss fp32 [], load [E]); counted: bool [B, T] or None."""
        H, E, k = x3.shape[-1], self.E, self.k
        x = x3.reshape(-1, H)
        N = x.shape[0]
        probs = torch.softmax(self.gate(x).float(), dim=1)  # [N, E]
        topw, topi = torch.topk(probs, k, dim=1)
        if self.norm_topk:
            topw = topw / topw.sum(-1, keepdim=True)
        topw = topw.to(x.dtype)
        # Switch load balancing: E * sum_e f_e * P_e
        onehot = F.one_hot(topi.reshape(-1), E).float()  # [N*k, E]
        if counted is None:
            f = onehot.mean(0)
            aux = (f * probs.mean(0)).sum() * E
        else:  # over the counted (non-padding) tokens only
            c = counted.reshape(N, 1).float()
            n = c.sum().clamp_min(1.0)
            f = (onehot.view(N, k, E).sum(1) * c).sum(0) / (n * k)
            aux = (f * ((probs * c).sum(0) / n)).sum() * E
        # Token permutation by expert (static shapes: compiles without graph breaks), the experts,
        # then back to (token, slot) order and the weighted sum over the k slots.
        flat = topi.reshape(-1)
        order = torch.argsort(flat, stable=True)
        counts = torch.zeros(E, dtype=torch.int64, device=x.device).scatter_add_(0, flat, torch.ones_like(flat))
        y = self.experts(x[order // k], counts)
        inv = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=x.device))
        out = (y[inv].view(N, k, H) * topw.unsqueeze(2)).sum(1)
        return out.view_as(x3), aux, f.detach()


class DenseMlp(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        H, I = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = nn.Linear(H, I, bias=False)
        self.up_proj = nn.Linear(H, I, bias=False)
        self.down_proj = nn.Linear(I, H, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg, i):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.is_moe = cfg.is_moe_layer(i)
        self.mlp = SparseMoeBlock(cfg) if self.is_moe else DenseMlp(cfg)

    def forward(self, x, cos, sin, mask, counted):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        h = self.post_attention_layernorm(x)
        if self.is_moe:
            m, aux, load = self.mlp(h, counted)
            return x + m, aux, load
        return x + self.mlp(h), None, None


class Qwen3MoeModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Qwen3MoeForCausalLM(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.model = Qwen3MoeModel(cfg)
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def set_experts_impl(self, impl):
        for m in self.modules():
            if isinstance(m, Experts):
                m.impl = impl

    def forward(self, ids, dtype, positions=None, segments=None, counted=None):
        """ids int64 [B, T]; dtype: the residual stream's (fp32, or bf16 under autocast).
        positions/segments int64 [B, T]: packed documents (each attends within itself, positions
        restart per document). counted bool [B, T]: the tokens the aux loss counts (None: all).
        Returns logits [B, T, V] (dtype), the aux loss (fp32 [], mean over the MoE layers), the
        per-layer expert loads."""
        B, T = ids.shape
        dev = ids.device
        mask = None
        if positions is None:
            cos, sin = rope_tables(self.config, torch.arange(T, device=dev), dtype)
        else:
            cos, sin = rope_tables(self.config, positions, dtype)
            causal = torch.ones(T, T, dtype=torch.bool, device=dev).tril()
            mask = ((segments.unsqueeze(2) == segments.unsqueeze(1)) & causal).unsqueeze(1)
        x = self.model.embed_tokens(ids).to(dtype)
        auxes, loads = [], []
        for layer in self.model.layers:
            x, aux, load = layer(x, cos, sin, mask, counted)
            if aux is not None:
                auxes.append(aux)
                loads.append(load)
        x = self.model.norm(x)
        head = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        logits = F.linear(x, head.to(x.dtype))
        aux = torch.stack(auxes).mean() if auxes else torch.zeros((), device=dev)
        return logits, aux, loads


# ---------------------------------------------------------------------------------------------
# Weights: fp4qat's random initialisation, or a Hugging Face folder

_ST_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64,
              "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8, "I8": torch.int8}


def read_safetensors(path):
    """{name: tensor} of one .safetensors file (no dependency on the safetensors package)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        dt = _ST_DTYPES[info["dtype"]]
        t = torch.frombuffer(bytearray(data[a:b]), dtype=dt) if b > a else torch.empty(0, dtype=dt)
        out[name] = t.reshape(info["shape"])
    return out


def read_hf_tensors(folder):
    idx = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(idx):
        with open(idx) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = sorted(n for n in os.listdir(folder) if n.endswith(".safetensors"))
    if not files:
        raise SystemExit(f"{folder}: no .safetensors files")
    out = {}
    for name in files:
        out.update(read_safetensors(os.path.join(folder, name)))
    return out


def load_hf_folder(model, folder):
    """Copies every parameter from the folder (per-expert or stacked expert names); refuses a
    missing, misshaped or unexpected tensor. The weights are converted to fp32 (the masters)."""
    cfg = model.config
    got = read_hf_tensors(folder)
    used = set()

    def take(name, shape):
        if name not in got:
            raise SystemExit(f"{folder}: tensor '{name}' missing")
        t = got[name]
        if list(t.shape) != list(shape):
            raise SystemExit(f"{folder}: tensor '{name}' has shape {list(t.shape)}, expected {list(shape)}")
        used.add(name)
        return t.float()

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("mlp.experts.gate_up_proj") or name.endswith("mlp.experts.down_proj"):
                if name in got:  # stacked (transformers 5)
                    p.copy_(take(name, p.shape))
                    continue
                base = name[: name.rfind(".") + 1]
                I = cfg.moe_intermediate_size
                for e in range(p.shape[0]):
                    if name.endswith("gate_up_proj"):
                        p[e, :I].copy_(take(f"{base}{e}.gate_proj.weight", p[e, :I].shape))
                        p[e, I:].copy_(take(f"{base}{e}.up_proj.weight", p[e, I:].shape))
                    else:
                        p[e].copy_(take(f"{base}{e}.down_proj.weight", p[e].shape))
            else:
                p.copy_(take(name, p.shape))
    extra = [n for n in got if n not in used and "rotary_emb.inv_freq" not in n
             and not (n == "lm_head.weight" and cfg.tie_word_embeddings)]
    if extra:
        raise SystemExit(f"{folder}: unexpected tensors {extra[:5]}")


def fp4qat_param_order(cfg):
    """(name, is_norm) in the order model/qwen3_moe.cpp creates its parameters."""
    out = [("model.embed_tokens.weight", False)]
    for i in range(cfg.num_hidden_layers):
        L = f"model.layers.{i}."
        out += [(L + "input_layernorm.weight", True), (L + "self_attn.q_proj.weight", False),
                (L + "self_attn.k_proj.weight", False), (L + "self_attn.v_proj.weight", False),
                (L + "self_attn.o_proj.weight", False), (L + "self_attn.q_norm.weight", True),
                (L + "self_attn.k_norm.weight", True), (L + "post_attention_layernorm.weight", True)]
        if cfg.is_moe_layer(i):
            out += [(L + "mlp.gate.weight", False), (L + "mlp.experts.gate_up_proj", False),
                    (L + "mlp.experts.down_proj", False)]
        else:
            out += [(L + "mlp.gate_proj.weight", False), (L + "mlp.up_proj.weight", False),
                    (L + "mlp.down_proj.weight", False)]
    out.append(("model.norm.weight", True))
    if not cfg.tie_word_embeddings:
        out.append(("lm_head.weight", False))
    return out


def init_like_fp4qat(model, seed):
    """fp4qat's Qwen3Moe(cfg, seed): normal(0, 1) * 0.02 from one CPU generator seeded `seed`, in
    its parameter order; norms 1. The same ATen generator and kernel: the same bits."""
    params = dict(model.named_parameters())
    order = fp4qat_param_order(model.config)
    assert sorted(n for n, _ in order) == sorted(params), "parameter names differ from fp4qat's"
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, is_norm in order:
            p = params[name]
            p.copy_(torch.ones(p.shape) if is_norm else torch.randn(p.shape, generator=gen) * 0.02)


# ---------------------------------------------------------------------------------------------
# Data: fp4qat's batches (trainer/data.cpp), bit for bit

M64 = (1 << 64) - 1


def mix(a, b):
    """splitmix64 of a combined key (trainer/data.cpp mix)."""
    z = (a * 0x9E3779B97F4A7C15 + b + 0x632BE59BD9B4E019) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def read_bin(path, magic, widths):
    """The 24-byte header of fp4qat's binary files (magic, width, reserved, n) and the data as numpy."""
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:8] != magic:
        raise SystemExit(f"{path}: not a {magic.decode()} file")
    w, reserved, n = struct.unpack("<IIQ", head[8:])
    if w not in widths or reserved != 0 or os.path.getsize(path) != 24 + n * w:
        raise SystemExit(f"{path}: bad header (width {w}, reserved {reserved}, n {n})")
    dt = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[w]
    return np.memmap(path, dtype=dt, mode="r", offset=24, shape=(n,)) if n else np.zeros(0, dt)


def write_token_file(path, tokens, width=2):
    """A flat token file (FP4QTOK1) as fp4qat's TokenFile::write writes it."""
    a = np.asarray(tokens, dtype={2: "<u2", 4: "<u4"}[width])
    with open(path, "wb") as f:
        f.write(b"FP4QTOK1" + struct.pack("<IIQ", width, 0, a.size) + a.tobytes())


class TokenFile:
    """Random windows of a flat token stream: row r of batch i starts at
    mix(mix(mix(seed, split), i), r) % (split tokens - T); the last val_fraction is the val split."""

    def __init__(self, path, val_fraction, seed):
        self.tok = read_bin(path, b"FP4QTOK1", (2, 4))
        n = self.tok.size
        self.n_train = n - int(n * val_fraction)
        self.seed = seed

    def batch(self, split, index, B, T):
        lo, hi = (0, self.n_train) if split == 0 else (self.n_train, self.tok.size)
        if hi - lo < T + 1:
            raise SystemExit(f"the token file's {'train' if split == 0 else 'val'} split has {hi - lo} "
                             f"tokens, fewer than one window of {T + 1}")
        rows = []
        for r in range(B):
            h = mix(mix(mix(self.seed, split), index), r)
            s = lo + h % (hi - lo - T)
            rows.append(np.asarray(self.tok[s:s + T + 1], dtype=np.int64))
        return {"ids": torch.from_numpy(np.stack(rows))}


class Dataset:
    """A prepared dataset folder (docs/data-format.md) batched as fp4qat's data::Dataset::batch: one
    document per row (cut to T + 1 tokens, padded) or, packing, documents back to back; a
    document's first token is never a target; the padding is neither a target nor counted by the
    aux loss."""

    def __init__(self, folder, val_fraction, seed):
        with open(os.path.join(folder, "dataset.json")) as f:
            m = json.load(f)
        self.tok = read_bin(os.path.join(folder, "tokens.bin"), b"FP4QTOK1", (2, 4))
        self.mask = read_bin(os.path.join(folder, "mask.bin"), b"FP4QMSK1", (1,))
        self.off = read_bin(os.path.join(folder, "docs.bin"), b"FP4QDOC1", (8,)).astype(np.int64)
        self.D = self.off.size - 1
        pad, eos = m.get("pad_id"), m.get("eos_id")
        self.pad = pad if pad is not None else (eos if eos is not None else 0)
        self.vocab_size = m["vocab_size"]
        n_val = int(self.D * val_fraction)
        if val_fraction > 0 and n_val == 0 and self.D >= 2:
            n_val = 1
        self.D_train = self.D - n_val
        self.seed = seed

    def batch(self, split, index, B, T, packing, use_mask):
        lo, nd = (0, self.D_train) if split == 0 else (self.D_train, self.D - self.D_train)
        if nd <= 0:
            raise SystemExit(f"the dataset's {'train' if split == 0 else 'validation'} split has no document")
        L = T + 1
        ids = np.full((B, L), self.pad, np.int64)
        tmask = np.zeros((B, L), bool)
        real = np.zeros((B, L), bool)
        pos = np.zeros((B, L), np.int64)
        seg = np.zeros((B, L), np.int64)
        for r in range(B):
            g = index * B + r
            fill, s, kk = 0, 0, 0
            while fill < L:
                h = mix(mix(mix(mix(self.seed, split), g), kk), 0x5F3)
                kk += 1
                d = lo + h % nd
                start = int(self.off[d])
                n = int(self.off[d + 1]) - start
                if fill == 0:
                    n = min(n, L)
                if fill + n > L:
                    break
                ids[r, fill:fill + n] = self.tok[start:start + n]
                m = np.ones(n, bool) if not use_mask else np.asarray(self.mask[start:start + n]) != 0
                m[0] = False
                tmask[r, fill:fill + n] = m
                real[r, fill:fill + n] = True
                pos[r, fill:fill + n] = np.arange(n)
                seg[r, fill:fill + n] = s
                fill += n
                s += 1
                if not packing:
                    break
            if packing:  # the padding: one more segment, positions from 0
                pos[r, fill:] = np.arange(L - fill)
                seg[r, fill:] = s
        out = {"ids": torch.from_numpy(ids), "loss_mask": torch.from_numpy(tmask[:, 1:].copy()),
               "real": torch.from_numpy(real[:, :-1].copy())}
        if packing:
            out["positions"] = torch.from_numpy(pos[:, :-1].copy())
            out["segments"] = torch.from_numpy(seg[:, :-1].copy())
        out["loss_tokens"] = int(out["loss_mask"].sum())
        return out


# ---------------------------------------------------------------------------------------------
# Loss and training step (trainer/train.cpp train_step, trainer/adamw.cpp)


def micro_loss(model, b, dtype, device, autocast):
    """(ce, aux): ce the mean next-token cross entropy (token file) or the sum over the loss targets
    (dataset folder); aux the load-balancing loss."""
    ids = b["ids"].to(device, non_blocking=True)
    inputs, targets = ids[:, :-1], ids[:, 1:]
    kw = {}
    if "loss_mask" in b:
        kw["counted"] = b["real"].to(device, non_blocking=True)
        if "positions" in b:
            kw["positions"] = b["positions"].to(device, non_blocking=True)
            kw["segments"] = b["segments"].to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        logits, aux, loads = model(inputs, dtype, **kw)
    logits = logits.float().reshape(-1, logits.shape[-1])
    if "loss_mask" not in b:
        return F.cross_entropy(logits, targets.reshape(-1)), aux, loads
    ce = F.cross_entropy(logits, targets.reshape(-1), reduction="none")
    mask = b["loss_mask"].to(device, non_blocking=True).reshape(-1)
    return torch.where(mask, ce, torch.zeros_like(ce)).sum(), aux, loads


def learning_rate(o, step, total):
    """trainer/adamw.cpp learning_rate: linear warmup, then cosine to lr * min_lr_ratio (0-based step)."""
    if o["warmup_steps"] > 0 and step < o["warmup_steps"]:
        return o["lr"] * (step + 1) / o["warmup_steps"]
    span = max(1, total - o["warmup_steps"])
    t = min(1.0, (step - o["warmup_steps"]) / span)
    min_lr = o["lr"] * o["min_lr_ratio"]
    return min_lr + 0.5 * (o["lr"] - min_lr) * (1.0 + math.cos(math.pi * t))


DEFAULTS = {  # fp4qat's trainer/config.h defaults
    "steps": 200, "batch_size": 16, "seq_len": 64, "grad_accum": 1, "seed": 1234,
    "val_fraction": 0.05, "packing": False, "objective": "lm",
    "lr": 3e-3, "min_lr_ratio": 0.1, "warmup_steps": 20, "weight_decay": 0.01,
    "beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "grad_clip": 1.0,
}
RECIPE_KEYS = {  # recipe key -> setting
    ("train", "steps"): "steps", ("train", "batch_size"): "batch_size", ("train", "seq_len"): "seq_len",
    ("train", "grad_accum"): "grad_accum", ("train", "seed"): "seed",
    ("data", "val_fraction"): "val_fraction", ("data", "packing"): "packing", ("objective",): "objective",
    ("optim", "lr"): "lr", ("optim", "min_lr_ratio"): "min_lr_ratio", ("optim", "warmup_steps"): "warmup_steps",
    ("optim", "weight_decay"): "weight_decay", ("optim", "beta1"): "beta1", ("optim", "beta2"): "beta2",
    ("optim", "eps"): "eps", ("optim", "grad_clip"): "grad_clip",
}


def settings_from(args):
    s = dict(DEFAULTS)
    if args.recipe:
        r = load_yaml(args.recipe)
        for path, key in RECIPE_KEYS.items():
            v = r
            for p in path:
                v = v.get(p) if isinstance(v, dict) else None
            if v is not None:  # PyYAML reads 1e-2 as a string; yaml-cpp (fp4qat) as a number
                d = DEFAULTS[key]
                s[key] = v if isinstance(d, (bool, str)) else type(d)(float(v) if isinstance(d, float) else v)
    for key in DEFAULTS:
        v = getattr(args, key, None)
        if v is not None:
            s[key] = v
    return s


def build(args, s, device, dtype, compile_):
    cfg = read_config(args.model)
    torch.manual_seed(0)
    model = Qwen3MoeForCausalLM(cfg)
    if args.init_seed is not None:
        init_like_fp4qat(model, args.init_seed)
    else:
        if not os.path.isdir(args.model):
            raise SystemExit("--model is a config file: give --init-seed S for fp4qat's initialisation")
        load_hf_folder(model, args.model)
    model.to(device)
    impl = args.experts
    if impl == "auto":
        # (torch.compile's meta function of _grouped_mm takes BF16 only: compiled fp32 runs loop)
        ok = grouped_mm_available(device, dtype) and not (compile_ and dtype != torch.bfloat16)
        impl = "grouped_mm" if ok else "loop"
    model.set_experts_impl(impl)
    return model, cfg, impl


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="Hugging Face folder (config.json + safetensors), "
                    "a config.json or a model YAML (then --init-seed)")
    ap.add_argument("--tokens", required=True, help="flat token file (FP4QTOK1) or prepared dataset folder")
    ap.add_argument("--init-seed", type=int, help="fp4qat's random initialisation with this train.seed "
                    "instead of the folder's weights")
    ap.add_argument("--recipe", help="fp4qat recipe / resolved config.yaml: train.*, optim.*, data.*, objective")
    for k, v in DEFAULTS.items():
        if isinstance(v, bool):
            ap.add_argument("--" + k.replace("_", "-"), action=argparse.BooleanOptionalAction, default=None)
        elif k == "objective":
            ap.add_argument("--objective", choices=["lm", "sft"], default=None)
        else:
            ap.add_argument("--" + k.replace("_", "-"), type=type(v), default=None, help=f"default {v}")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"],
                    help="auto: bf16 autocast on CUDA, fp32 on the CPU (masters fp32 either way)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="torch.compile each decoder layer (default: on for CUDA)")
    ap.add_argument("--experts", default="auto", choices=["auto", "grouped_mm", "loop"])
    ap.add_argument("--timing-warmup", type=int, default=2, help="steps left out of the tokens/s summary")
    ap.add_argument("--log-every", type=int, default=1)
    ap.add_argument("--json", help="write the per-step records and the summary here")
    args = ap.parse_args(argv)

    s = settings_from(args)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    bf16 = args.dtype == "bf16" or (args.dtype == "auto" and device.type == "cuda")
    dtype = torch.bfloat16 if bf16 else torch.float32
    compile_ = device.type == "cuda" if args.compile is None else args.compile
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 stays fp32 (the BF16 GEMMs are unaffected)
    model, cfg, impl = build(args, s, device, dtype, compile_)

    is_dataset = os.path.isdir(args.tokens)
    if is_dataset:
        data = Dataset(args.tokens, s["val_fraction"], s["seed"])
        if data.vocab_size > cfg.vocab_size:
            raise SystemExit(f"{args.tokens}: vocab_size {data.vocab_size} exceeds the model's {cfg.vocab_size}")
    else:
        if s["objective"] != "lm":
            raise SystemExit("objective sft needs a prepared dataset folder (--tokens DIR)")
        data = TokenFile(args.tokens, s["val_fraction"], s["seed"])

    if compile_:
        # torchtitan: one compiled region per decoder layer; with _grouped_mm a layer has static
        # shapes and no graph break (the loop's host-side counts break it)
        for i, layer in enumerate(model.model.layers):
            model.model.layers[i] = torch.compile(layer, fullgraph=impl == "grouped_mm")

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    fused = device.type == "cuda"
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": s["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=s["lr"], betas=(s["beta1"], s["beta2"]), eps=s["eps"],
                            fused=fused, foreach=None if fused else True)
    params = list(model.parameters())
    B, T, G, steps = s["batch_size"], s["seq_len"], s["grad_accum"], s["steps"]
    coef = cfg.router_aux_loss_coef
    n_params = sum(p.numel() for p in params)
    print(f"qwen3_moe_train: {n_params / 1e6:.2f} M parameters, device {device}, "
          f"{'bf16 autocast' if bf16 else 'fp32'}, experts {impl}, compile {compile_}, "
          f"{'dataset ' + s['objective'] + (' packed' if s['packing'] else '') if is_dataset else 'token file'}",
          flush=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    records = []
    for step in range(steps):
        t0 = time.perf_counter()
        micro = []
        for m in range(G):
            bi = step * G + m  # one process: rank 0 of world 1
            micro.append(data.batch(0, bi, B, T, s["packing"], s["objective"] == "sft") if is_dataset
                         else data.batch(0, bi, B, T))
        targets = sum(b["loss_tokens"] for b in micro) if is_dataset else 0
        loss_sum, aux_sum, loads = 0.0, 0.0, None
        for m, b in enumerate(micro):
            ce, aux, ld = micro_loss(model, b, dtype, device, autocast=bf16)
            weight = 1.0 / max(targets, 1.0) if is_dataset else 1.0 / G
            (ce * weight + aux * (coef / G)).backward()
            ce_v = ce.item()  # one host sync per micro-batch, as fp4qat
            if not math.isfinite(ce_v):
                raise SystemExit(f"step {step + 1}: the loss is not finite")
            loss_sum += ce_v * weight
            aux_sum += aux.item() / G
            if m == 0:
                loads = [x.tolist() for x in ld]
        lr = learning_rate(s, step, steps)
        for g in opt.param_groups:
            g["lr"] = lr
        norm = torch.nn.utils.clip_grad_norm_(params, s["grad_clip"] if s["grad_clip"] > 0 else float("inf"))
        opt.step()
        opt.zero_grad(set_to_none=True)
        grad_norm = float(norm)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        tokens = B * T * G
        rec = {"step": step + 1, "loss": loss_sum, "aux_loss": aux_sum, "lr": lr, "grad_norm": grad_norm,
               "step_s": dt, "tokens_per_s": tokens / dt, "expert_load": loads}
        records.append(rec)
        if args.log_every and ((step + 1) % args.log_every == 0 or step == 0 or step + 1 == steps):
            print(f"step {step + 1:5d}/{steps}  loss {loss_sum:.6f}  aux {aux_sum:.4f}  lr {lr:.2e}  "
                  f"|g| {grad_norm:.3f}  {tokens / dt:.0f} tok/s", flush=True)

    timed = records[min(args.timing_warmup, max(len(records) - 1, 0)):]
    summary = {
        "steps": steps, "tokens_per_step": B * T * G,
        "tokens_per_s": (B * T * G * len(timed) / sum(r["step_s"] for r in timed)) if timed else None,
        "timed_steps": len(timed),
        "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "dtype": "bf16-autocast" if bf16 else "fp32", "compile": compile_,
        "experts": impl, "parameters": n_params, "settings": s, "model": vars(cfg),
    }
    if summary["tokens_per_s"]:
        print(f"summary: {summary['tokens_per_s']:.0f} tok/s over {len(timed)} steps"
              + (f", peak memory {summary['peak_memory_bytes'] / 2**30:.2f} GiB" if device.type == "cuda" else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"summary": summary, "steps": records}, f, indent=1)
    return {"summary": summary, "steps": records, "model": model}


if __name__ == "__main__":
    main()
