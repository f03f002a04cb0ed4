#!/usr/bin/env python3
"""bench/baselines/moe_mlp_grouped_mm.py — the BF16 expert MLP of bench/bench_moe_mlp.cpp with
torch._grouped_mm from Python (same shapes: 16384 tokens x top-8, 128 experts, H 2048, I 768),
forward+backward, CUDA-event median."""
import torch
import torch.nn.functional as F

E, topk, H, I, tokens = 128, 8, 2048, 768, 16384
T = tokens * topk
dev = "cuda"
torch.manual_seed(0)
x = torch.randn(T, H, device=dev, dtype=torch.bfloat16, requires_grad=True)
w13 = (torch.randn(E, 2 * I, H, device=dev, dtype=torch.bfloat16) * 0.02).requires_grad_()
w2 = (torch.randn(E, H, I, device=dev, dtype=torch.bfloat16) * 0.02).requires_grad_()
offs = torch.cumsum(torch.full((E,), T // E, device=dev, dtype=torch.int32), 0, dtype=torch.int32)
gy = torch.randn(T, H, device=dev, dtype=torch.bfloat16)
flops = 3 * 2 * T * H * 2 * I + 3 * 2 * T * I * H


def step():
    for t in (x, w13, w2):
        t.grad = None
    h = torch._grouped_mm(x, w13.transpose(1, 2), offs)
    g, u = h.chunk(2, 1)
    y = torch._grouped_mm(F.silu(g) * u, w2.transpose(1, 2), offs)
    y.backward(gy)


for _ in range(3):
    step()
torch.cuda.synchronize()
ts = []
for _ in range(10):
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    step()
    b.record()
    b.synchronize()
    ts.append(a.elapsed_time(b))
ts.sort()
ms = ts[len(ts) // 2]
print(f"python torch._grouped_mm bf16 MLP fwd+bwd: {ms:.3f} ms, {flops / ms / 1e9:.1f} TFLOP/s ({torch.cuda.get_device_name(0)})")
