#!/usr/bin/env python3
"""bench/baselines/nvfp4_quant.py — the NVFP4 / fake-quant / MXFP8 algorithm of
docs/spec/numerics.md in plain PyTorch (eager, then torch.compile), timed on the GPU
on the same cases as bench/bench_quantize.cpp. Before timing, the eager version is checked
byte for byte against the shared vectors (so it is the same algorithm), when --vectors is given.

usage: nvfp4_quant.py [--vectors DIR] [--reps 20] [--warmup 5] [--json FILE]
"""
import argparse
import glob
import json
import os
import struct
import sys

import torch

FLT_MAX = 3.4028234663852886e38
SIXTH = torch.tensor(1.0 / 6.0, dtype=torch.float32).item()  # 1/6 rounded to float32 first


def e2m1_codes(v):
    """v: float32 already clamped to [-6, 6]. Ladder of numerics.md with arithmetic, not masks."""
    a = v.abs()
    c = ((a > 0.25).to(torch.uint8) + (a >= 0.75) + (a > 1.25) + (a >= 1.75) + (a > 2.5) + (a >= 3.5) + (a > 5.0))
    return c.to(torch.uint8) | ((v < 0).to(torch.uint8) << 3)


def nvfp4_quantize(x, two_d=False, fake=False):
    """x: [E, N, K] (bf16/f32). Returns (codes [E,N,K/2] u8 | fake bf16 [E,N,K], scales e4m3 [E,N,K/16], s_dec [E])."""
    E, N, K = x.shape
    xf = x.float()
    amax = xf.abs().amax(dim=(1, 2))
    # A true division: `2688.0 / tensor` in PyTorch is reciprocal-then-multiply, which differs.
    s_enc = torch.clamp(torch.div(torch.full_like(amax, 2688.0), amax), max=FLT_MAX)
    s_enc = torch.where((amax == 0) | (s_enc == 0), torch.ones_like(s_enc), s_enc)
    s_dec = torch.div(torch.ones_like(s_enc), s_enc)
    blocks = xf.view(E, N, K // 16, 16)
    bmax = blocks.abs().amax(-1)  # [E, N, K/16]
    if two_d:
        pad = (-N) % 16
        t = torch.nn.functional.pad(bmax, (0, 0, 0, pad)).view(E, (N + pad) // 16, 16, K // 16).amax(2)
        bmax = t.repeat_interleave(16, dim=1)[:, :N]
    factor = (s_enc * SIXTH)[:, None, None]
    sb = torch.clamp(torch.clamp(bmax * factor, max=FLT_MAX), -448.0, 448.0).to(torch.float8_e4m3fn)
    denom = sb.float() * s_dec[:, None, None]
    enc = torch.clamp(torch.div(torch.ones_like(denom), denom), max=FLT_MAX)
    v = torch.clamp(blocks * enc[..., None], -6.0, 6.0)
    codes = e2m1_codes(v).view(E, N, K)
    if fake:
        mag = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], device=x.device)
        vals = mag[codes.long()].view(E, N, K // 16, 16) * sb.float()[..., None]
        return vals.view(E, N, K).to(torch.bfloat16), sb, s_dec
    packed = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return packed, sb, s_dec


def tdiv(a, b):
    """a / b as a true float32 division (b a number: PyTorch would multiply by its reciprocal)."""
    return torch.div(a, torch.full_like(a, b) if not torch.is_tensor(b) else b)


def nvfp4_quantize_4over6(x, two_d=False, m=256.0, mse=False):
    """Four Over Six (numerics.md): x [E, N, K] -> (codes [E,N,K/2] u8, scales e4m3 [E,N,K/16], s_dec [E])."""
    E, N, K = x.shape
    xf = x.float()
    amax = xf.abs().amax(dim=(1, 2))
    s_enc = torch.clamp(tdiv(torch.full_like(amax, m * 6.0), amax), max=FLT_MAX)
    s_enc = torch.where((amax == 0) | (s_enc == 0), torch.ones_like(s_enc), s_enc)
    s_dec = tdiv(torch.ones_like(s_enc), s_enc)
    blocks = xf.view(E, N, K // 16, 16)
    bmax = blocks.abs().amax(-1)
    pad = (-N) % 16
    if two_d:
        t = torch.nn.functional.pad(bmax, (0, 0, 0, pad)).view(E, (N + pad) // 16, 16, K // 16).amax(2)
        bmax = t.repeat_interleave(16, dim=1)[:, :N]
    base = tdiv(bmax, 6.0) * s_enc[:, None, None]  # the division first
    mag = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], device=x.device)
    out = []
    for sb in (torch.clamp(base, max=448.0).to(torch.float8_e4m3fn),
               torch.clamp(base * 1.5, max=448.0).to(torch.float8_e4m3fn)):
        denom = sb.float() * s_dec[:, None, None]
        enc = torch.clamp(tdiv(torch.ones_like(denom), denom), max=FLT_MAX)
        codes = e2m1_codes(torch.clamp(blocks * enc[..., None], -6.0, 6.0))
        d = tdiv((mag[codes.long()] * sb.float()[..., None]) * amax[:, None, None, None], m * 6.0) - blocks
        t = d * d if mse else d.abs()
        err = t[..., 0]
        for i in range(1, 16):  # sequential, element order
            err = err + t[..., i]
        if two_d:  # the tile's error: the spec's tree over its 16 rows
            r = torch.nn.functional.pad(err, (0, 0, 0, pad)).view(E, (N + pad) // 16, 16, K // 16)
            for w in (8, 4, 2, 1):
                r = r[:, :, :w] + r[:, :, w:2 * w]
            err = r[:, :, 0].repeat_interleave(16, dim=1)[:, :N]
        out.append((codes, sb, err))
    (c6, s6, e6), (c4, s4, e4) = out
    four = e4 < e6
    codes = torch.where(four[..., None], c4, c6).view(E, N, K)
    sb = torch.where(four, s4.view(torch.uint8), s6.view(torch.uint8)).view(torch.float8_e4m3fn)
    return codes[..., 0::2] | (codes[..., 1::2] << 4), sb, s_dec


def mxfp8_quantize(x):
    """The corrected rule of numerics.md: e8m0 = the smallest 2^(c-127) >= amax/448 (code 0 = 2^-127)."""
    E, N, K = x.shape
    blocks = x.float().view(E, N, K // 32, 32)
    amax = blocks.abs().amax(-1)
    s = tdiv(amax, 448.0).view(torch.int32)
    e, mant = (s >> 23) & 0xFF, s & 0x7FFFFF
    up = (mant != 0) & (e < 0xFE) & ~((e == 0) & (mant <= 0x400000))
    code = torch.where(up, e + 1, e)
    scale = torch.where(code == 0, torch.full_like(amax, 2.0 ** -127), (code << 23).view(torch.float32))
    q = torch.where(amax[..., None] == 0, torch.zeros_like(blocks), blocks / scale[..., None])
    return q.to(torch.float8_e4m3fn).view(E, N, K), code.to(torch.uint8)


def read_safetensors(path):
    with open(path, "rb") as f:
        b = f.read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    out = {}
    dt = {"F32": torch.float32, "BF16": torch.bfloat16, "U8": torch.uint8, "F8_E4M3": torch.float8_e4m3fn}
    for k, v in h.items():
        if k == "__metadata__":
            continue
        s, e = v["data_offsets"]
        raw = torch.frombuffer(bytearray(b[8 + n + s:8 + n + e]), dtype=torch.uint8)
        out[k] = raw.view(dt[v["dtype"]]).reshape(v["shape"])
    return out


def check_vectors(d, dev):
    n = 0
    for p in sorted(glob.glob(os.path.join(d, "*.safetensors"))):
        t = read_safetensors(p)
        if "input" not in t:
            continue
        x = t["input"].to(dev)[None]
        for tag, two_d in (("nvfp4_1d", False), ("nvfp4_2d", True)):
            c, s, sd = nvfp4_quantize(x, two_d)
            ok = (torch.equal(c[0].cpu(), t[tag + ".weight"]) and
                  torch.equal(s[0].cpu().view(torch.uint8), t[tag + ".weight_scale"].view(torch.uint8)) and
                  torch.equal(sd[0].cpu(), t[tag + ".weight_scale_2"]))
            if not ok:
                sys.exit(f"baseline differs from the vectors: {p} {tag}")
        if "mxfp8.weight" in t:
            q, s = mxfp8_quantize(x)
            if not (torch.equal(q[0].cpu().view(torch.uint8), t["mxfp8.weight"].view(torch.uint8)) and
                    torch.equal(s[0].cpu(), t["mxfp8.weight_scale_inv"])):
                sys.exit(f"mxfp8 baseline differs from the vectors: {p}")
        n += 1
    print(f"baseline matches {n} vector files byte for byte")
    m = 0
    for p in sorted(glob.glob(os.path.join(d, "te", "*.safetensors"))):
        t = read_safetensors(p)
        x = t["input"].to(dev)[None]
        for k in t:
            if not ("_4over6_" in k and "rows" not in k and k.endswith(".weight")):
                continue
            v = k[:-len(".weight")]
            c, s, sd = nvfp4_quantize_4over6(x, "_2d" in v, 448.0 if "_448_" in v else 256.0, v.endswith("_mse"))
            if not (torch.equal(c[0].cpu(), t[v + ".weight"]) and
                    torch.equal(s[0].cpu().view(torch.uint8), t[v + ".weight_scale"].view(torch.uint8)) and
                    torch.equal(sd[0].cpu(), t[v + ".weight_scale_2"])):
                sys.exit(f"4over6 baseline differs from TransformerEngine's vectors: {p} {v}")
            m += 1
    print(f"4over6 baseline matches {m} TransformerEngine cases byte for byte")


def median_ms(fn, reps, warmup):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vectors")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--json")
    ap.add_argument("--only", default="", help="run only the cases whose name contains this")
    a = ap.parse_args()
    dev = "cuda"
    print("torch", torch.__version__, torch.cuda.get_device_name(0))
    if a.vectors:
        check_vectors(a.vectors, dev)
    torch.manual_seed(0)
    x8k = torch.randn(1, 8192, 8192, device=dev, dtype=torch.bfloat16)
    w13 = torch.randn(128, 1536, 2048, device=dev, dtype=torch.bfloat16) * 0.02
    w2 = torch.randn(128, 2048, 768, device=dev, dtype=torch.bfloat16) * 0.02
    compiled = {
        "nvfp4": torch.compile(nvfp4_quantize, dynamic=False),
        "mxfp8": torch.compile(mxfp8_quantize, dynamic=False),
        "4over6": torch.compile(nvfp4_quantize_4over6, dynamic=False),
    }
    cases = [
        ("nvfp4 1d 8192x8192", lambda f: f["nvfp4"](x8k)),
        ("nvfp4 1d MoE layer (128 experts)", lambda f: (f["nvfp4"](w13), f["nvfp4"](w2))),
        ("nvfp4 2d MoE layer (128 experts)", lambda f: (f["nvfp4"](w13, True), f["nvfp4"](w2, True))),
        ("mxfp8 MoE layer (128 experts)", lambda f: (f["mxfp8"](w13), f["mxfp8"](w2))),
        ("fake-quant 1d MoE layer", lambda f: (f["nvfp4"](w13, False, True), f["nvfp4"](w2, False, True))),
        ("nvfp4 1d MoE layer 4over6-256-mae", lambda f: (f["4over6"](w13), f["4over6"](w2))),
        ("nvfp4 2d MoE layer 4over6-256-mae", lambda f: (f["4over6"](w13, True), f["4over6"](w2, True))),
    ]
    eager = {"nvfp4": nvfp4_quantize, "mxfp8": mxfp8_quantize, "4over6": nvfp4_quantize_4over6}
    # Whether torch.compile kept the arithmetic (it may rewrite divisions): compiled vs eager bytes.
    for two_d in (False, True) if a.only in "nvfp4 1d MoE layer 4over6-256-mae" else ():
        a_, b_ = nvfp4_quantize_4over6(w2, two_d), compiled["4over6"](w2, two_d)
        same = all(torch.equal(u.view(torch.uint8) if u.dtype == torch.float8_e4m3fn else u,
                               v.view(torch.uint8) if v.dtype == torch.float8_e4m3fn else v) for u, v in zip(a_, b_))
        print(f"4over6 {'2d' if two_d else '1d'}: torch.compile output equals eager: {same}", flush=True)
    rows = []
    for name, fn in cases:
        if a.only not in name:
            continue
        t_e = median_ms(lambda: fn(eager), a.reps, a.warmup)
        t_c = median_ms(lambda: fn(compiled), a.reps, a.warmup)
        rows.append({"name": name, "eager_ms": t_e, "compile_ms": t_c})
        print(f"{name:36s} eager {t_e:9.3f} ms   torch.compile {t_c:9.3f} ms", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "cases": rows}, f, indent=2)


if __name__ == "__main__":
    main()
