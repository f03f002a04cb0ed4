#!/usr/bin/env python3
"""bench/baselines/moe_mlp_grouped_mm.py — the expert MLP of bench/bench_moe_mlp.cpp from Python
(same shapes: 16384 tokens x top-8, 128 experts, H 2048, I 768, uniform routing),
forward+backward, CUDA-event medians:

  bf16       torch._grouped_mm both ways (the issue's reference kernel);
  fake-quant the same MLP with NVFP4 fake quantization in the forward (activations 1x16 blocks
             with their expert's amax, weights 1x16 blocks with their expert's amax: the
             algorithm of bench/baselines/nvfp4_quant.py, which is checked byte for byte against
             the shared vectors there), the bf16 GEMMs on E2M1 x E4M3 operands, alpha =
             S_dec_x * S_dec_w applied to the GEMM's bf16 output, and the `high_precision`
             backward (dX, dW from the saved bf16 originals; dY not quantized). Timed eager and
             under torch.compile — the issue's "torch.compile'd fake-quant version of the same MLP".

usage: moe_mlp_grouped_mm.py [--no-fake-quant] [--reps 10] [--warmup 3]
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nvfp4_quant import median_ms, nvfp4_quantize  # noqa: E402

E, topk, H, I, tokens = 128, 8, 2048, 768, 16384
T = tokens * topk
M = T // E  # rows per expert (uniform routing)
FLOPS = 3 * 2 * T * H * 2 * I + 3 * 2 * T * I * H


def fake_quant_rows(a, n_groups):
    """a: [T, K] bf16, rows grouped by expert (equal counts). Returns (E2M1 x E4M3 values as bf16
    [T, K], S_dec per expert [E])."""
    v, _, s_dec = nvfp4_quantize(a.view(n_groups, -1, a.shape[-1]), fake=True)
    return v.view_as(a), s_dec


class FakeQuantGroupedLinear(torch.autograd.Function):
    """y[T, N] = x[T, K] @ W[e]^T per expert, forward on NVFP4 fake-quantized operands,
    backward `high_precision` (qat.md): the saved bf16 x and W, the gradient dY as it is."""

    @staticmethod
    def forward(ctx, x, w, offs):  # x [T, K], w [E, N, K] ([out, in])
        ctx.save_for_backward(x, w, offs)
        qx, sx = fake_quant_rows(x, w.shape[0])
        qw, _, sw = nvfp4_quantize(w, fake=True)
        y = torch._grouped_mm(qx, qw.transpose(1, 2), offs)  # [T, N] bf16
        alpha = (sx * sw).repeat_interleave(x.shape[0] // w.shape[0])[:, None]
        return (y.float() * alpha).to(torch.bfloat16)

    @staticmethod
    def backward(ctx, dy):
        x, w, offs = ctx.saved_tensors
        dx = torch._grouped_mm(dy, w, offs)  # [T, K]
        dwt = torch._grouped_mm(x.t(), dy, offs)  # [E, K, N]
        return dx, dwt.transpose(1, 2), None


def bf16_mlp(x, w13, w2, offs):
    h = torch._grouped_mm(x, w13.transpose(1, 2), offs)
    g, u = h.chunk(2, 1)
    return torch._grouped_mm(F.silu(g) * u, w2.transpose(1, 2), offs)


def fake_quant_mlp(x, w13, w2, offs):
    h = FakeQuantGroupedLinear.apply(x, w13, offs)
    g, u = h.chunk(2, 1)
    return FakeQuantGroupedLinear.apply(F.silu(g) * u, w2, offs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-fake-quant", action="store_true")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    a = ap.parse_args()
    dev = "cuda"
    torch.manual_seed(0)
    x = torch.randn(T, H, device=dev, dtype=torch.bfloat16, requires_grad=True)
    w13 = (torch.randn(E, 2 * I, H, device=dev, dtype=torch.bfloat16) * 0.02).requires_grad_()
    w2 = (torch.randn(E, H, I, device=dev, dtype=torch.bfloat16) * 0.02).requires_grad_()
    offs = torch.cumsum(torch.full((E,), M, device=dev, dtype=torch.int32), 0, dtype=torch.int32)
    gy = torch.randn(T, H, device=dev, dtype=torch.bfloat16)

    def stepper(mlp):
        def step():
            for t in (x, w13, w2):
                t.grad = None
            mlp(x, w13, w2, offs).backward(gy)
        return step

    name = torch.cuda.get_device_name(0)
    paths = [("python torch._grouped_mm bf16 MLP fwd+bwd", stepper(bf16_mlp))]
    if not a.no_fake_quant:
        paths.append(("python fake-quant NVFP4 MLP eager", stepper(fake_quant_mlp)))
        try:
            compiled = torch.compile(fake_quant_mlp, dynamic=False)
            stepper(compiled)()  # compile now, so a failure is reported and the rest still runs
            paths.append(("python fake-quant NVFP4 MLP torch.compile", stepper(compiled)))
        except Exception as e:  # a compile failure is a result to report, not a crash
            print(f"torch.compile of the fake-quant MLP failed: {type(e).__name__}: {e}", flush=True)
    # Two interleaved rounds, so a clock drift touches every path alike.
    results = {p: [] for p, _ in paths}
    for _ in range(2):
        for p, step in paths:
            results[p].append(median_ms(step, a.reps, a.warmup))
    bf16 = min(results[paths[0][0]])
    for p, _ in paths:
        ms = min(results[p])
        rounds = " / ".join(f"{t:.3f}" for t in results[p])
        print(f"{p}: {ms:.3f} ms, {FLOPS / ms / 1e9:.1f} TFLOP/s, {ms / bf16:.3f}x python bf16 "
              f"(rounds {rounds}) ({name})", flush=True)


if __name__ == "__main__":
    main()
