#!/usr/bin/env python3
"""tests/model/hf_reference.py — the Hugging Face side of the interop test (CPU, fp32).

  make DIR        create a small random Qwen3-MoE with `transformers`, save it to DIR, and write
                  DIR/reference.safetensors with input ids and its logits
  logits DIR REF OUT
                  load DIR with `transformers`, run the ids of REF, write the logits to OUT
"""
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM


def logits_of(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float().contiguous()


def main():
    torch.manual_seed(0)
    if sys.argv[1] == "make":
        d = sys.argv[2]
        cfg = Qwen3MoeConfig(vocab_size=128, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                             num_key_value_heads=2, head_dim=16, intermediate_size=96, moe_intermediate_size=32,
                             num_experts=4, num_experts_per_tok=2, norm_topk_prob=True, mlp_only_layers=[1],
                             decoder_sparse_step=1, max_position_embeddings=128, rope_theta=10000.0,
                             rms_norm_eps=1e-6, tie_word_embeddings=False)
        model = Qwen3MoeForCausalLM(cfg).float().eval()
        # Non-trivial norms so that a swapped or missing norm weight shows in the logits.
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.endswith("norm.weight"):
                    p.copy_(1.0 + 0.1 * torch.randn_like(p))
        model.save_pretrained(d, safe_serialization=True)
        ids = torch.randint(0, 128, (2, 11))
        save_file({"ids": ids, "logits": logits_of(model, ids)}, f"{d}/reference.safetensors")
    elif sys.argv[1] == "logits":
        model = Qwen3MoeForCausalLM.from_pretrained(sys.argv[2], torch_dtype=torch.float32).eval()
        ids = load_file(sys.argv[3])["ids"]
        save_file({"logits": logits_of(model, ids)}, sys.argv[4])
    else:
        sys.exit("usage: hf_reference.py make DIR | logits DIR REF OUT")


if __name__ == "__main__":
    main()
