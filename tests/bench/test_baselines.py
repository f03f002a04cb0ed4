#!/usr/bin/env python3
"""tests/bench/test_baselines.py — CPU checks of the PyTorch baselines in bench/baselines/, so a
GPU comparison against them compares against the right thing:
  1. nvfp4_quant.py's NVFP4 (1D, 2D) and MXFP8 reproduce every shared vector file byte for byte;
  2. moe_mlp_grouped_mm.py's fake-quant grouped linear: forward equals "fake-quantize both operands
     with that algorithm, fp32 GEMM per expert, bf16, times alpha"; its dX / dW equal a plain
     bf16 torch._grouped_mm's (the high_precision backward); and it differs from the bf16
     forward (so a fake quantization that does nothing fails).
Vectors: the folder given as the first argument (the repository's tests/data/vectors). Exit 0 = pass.
"""
import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "..", "bench", "baselines"))

import torch  # noqa: E402

import moe_mlp_grouped_mm as mlp  # noqa: E402
import nvfp4_quant  # noqa: E402


def fail(msg):
    print("FAIL:", msg)
    sys.exit(1)


def main():
    vectors = sys.argv[1] if len(sys.argv) > 1 else ""
    if not os.path.isdir(vectors):
        fail(f"no vectors folder: {vectors!r} (pass tests/data/vectors)")
    nvfp4_quant.check_vectors(vectors, "cpu")  # exits non-zero on the first difference

    torch.manual_seed(0)
    E, M, K, N = 3, 5, 64, 32  # [E*M, K] rows grouped by expert, W [E, N, K] ([out, in])
    x = (torch.randn(E * M, K) * torch.tensor([1.0, 40.0, 0.01]).repeat_interleave(M)[:, None]).bfloat16()
    w = (torch.randn(E, N, K) * 0.1).bfloat16()
    offs = (torch.arange(1, E + 1) * M).to(torch.int32)
    xa, wa = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = mlp.FakeQuantGroupedLinear.apply(xa, wa, offs)  # [E*M, N]
    qx, _, sx = nvfp4_quant.nvfp4_quantize(x.view(E, M, K), fake=True)
    qw, _, sw = nvfp4_quant.nvfp4_quantize(w, fake=True)
    ref = torch.cat([(qx[e].float() @ qw[e].float().t()).bfloat16().float() * (sx[e] * sw[e])
                     for e in range(E)]).bfloat16()
    if not torch.equal(y, ref):
        fail("fake-quant forward differs from its definition")
    plain = torch._grouped_mm(x, w.transpose(1, 2), offs)
    if torch.equal(y, plain):
        fail("fake-quant forward equals the bf16 forward: the quantization did nothing")
    gy = torch.randn_like(y)
    y.backward(gy)
    xb, wb = x.clone().requires_grad_(), w.clone().requires_grad_()
    torch._grouped_mm(xb, wb.transpose(1, 2), offs).backward(gy)
    if not (torch.equal(xa.grad, xb.grad) and torch.equal(wa.grad, wb.grad)):
        fail("fake-quant backward is not the high_precision one (bf16 grouped_mm's dX, dW)")
    print("baselines: vectors reproduced; fake-quant grouped linear = its definition, high_precision backward")


if __name__ == "__main__":
    main()
