// kernels/cuda_api.cpp — at::Tensor glue for the CUDA kernels (kernels/cuda_kernels.h): checks,
// allocation through the caching allocator, the current CUDA stream. No host synchronisation.
#include "kernels/cuda_api.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/common/check.h"
#include "kernels/cuda_kernels.h"

namespace fp4qat::cuda {

namespace ck = fp4qat::cuda_kernels;

namespace {

ck::InType in_type(const at::Tensor& x) {
  switch (x.scalar_type()) {
    case at::kFloat:
      return ck::InType::F32;
    case at::kBFloat16:
      return ck::InType::BF16;
    case at::kHalf:
      return ck::InType::F16;
    default:
      FP4QAT_FAIL("CUDA quantize: unsupported dtype ", x.scalar_type());
  }
}

// Contiguous and 16-byte aligned (the kernels use 16-byte vector loads).
at::Tensor prepared(const at::Tensor& x) {
  at::Tensor c = x.contiguous();
  if (reinterpret_cast<uintptr_t>(c.data_ptr()) % 16 != 0) c = c.clone();
  return c;
}

cudaStream_t stream() { return at::cuda::getCurrentCUDAStream().stream(); }

at::Tensor amax_like(const at::Tensor& x) {
  return x.dim() == 3 ? at::empty({x.size(0)}, x.options().dtype(at::kFloat))
                      : at::empty({}, x.options().dtype(at::kFloat));
}

struct Quantized {
  at::Tensor codes, scales, fake, s_dec;
};

Quantized run_nvfp4(const at::Tensor& x_in, Blocks blocks, const std::optional<at::Tensor>& amax, bool packed,
                    bool fake) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = prepared(x_in);
  const int64_t E = x.dim() == 3 ? x.size(0) : 1, N = x.size(-2), K = x.size(-1);
  Quantized out;
  auto u8 = x.options().dtype(at::kByte);
  auto shape = x.sizes().vec();
  if (packed) {
    shape.back() = K / 2;
    out.codes = at::empty(shape, u8);
    shape.back() = K / 16;
    out.scales = at::empty(shape, u8);
  }
  if (fake) out.fake = at::empty(x.sizes(), x.options().dtype(at::kBFloat16));
  out.s_dec = amax_like(x);
  at::Tensor ws = at::empty({static_cast<int64_t>(ck::nvfp4_workspace_bytes(E))}, u8);
  at::Tensor given;
  if (amax) given = amax->contiguous();
  ck::Nvfp4Args a;
  a.x = x.data_ptr();
  a.type = in_type(x);
  a.E = E;
  a.N = N;
  a.K = K;
  a.two_d = blocks == Blocks::k2D;
  a.given_amax = amax ? given.data_ptr<float>() : nullptr;
  a.codes = packed ? out.codes.data_ptr<uint8_t>() : nullptr;
  a.scales = packed ? out.scales.data_ptr<uint8_t>() : nullptr;
  a.fake = fake ? reinterpret_cast<uint16_t*>(out.fake.data_ptr()) : nullptr;
  a.s_dec = out.s_dec.data_ptr<float>();
  a.workspace = ws.data_ptr();
  ck::nvfp4_quantize(a, stream());
  return out;
}

}  // namespace

at::Tensor global_amax(const at::Tensor& x_in) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = prepared(x_in);
  at::Tensor out = amax_like(x);
  const int64_t E = x.dim() == 3 ? x.size(0) : 1;
  const int64_t per = E ? x.numel() / E : 0;
  if (per % 16 == 0) {
    ck::amax(x.data_ptr(), in_type(x), E, per, out.data_ptr<float>(), stream());
  } else {  // odd sizes (not used by the quantizers, which require K % 16 == 0)
    out.copy_(x.dim() == 3 ? x.abs().reshape({E, -1}).amax(1).to(at::kFloat) : x.abs().max().to(at::kFloat));
  }
  return out;
}

NVFP4Tensor nvfp4_quantize(const at::Tensor& x, Blocks blocks, const std::optional<at::Tensor>& amax) {
  Quantized q = run_nvfp4(x, blocks, amax, /*packed=*/true, /*fake=*/false);
  return {q.codes, q.scales.view(at::kFloat8_e4m3fn), q.s_dec, blocks};
}

NVFP4FakeQuant nvfp4_fake_quantize(const at::Tensor& x, Blocks blocks, const std::optional<at::Tensor>& amax) {
  Quantized q = run_nvfp4(x, blocks, amax, /*packed=*/false, /*fake=*/true);
  return {q.fake, q.s_dec};
}

NVFP4Operand nvfp4_quantize_and_fake(const at::Tensor& x, Blocks blocks, const std::optional<at::Tensor>& amax) {
  Quantized q = run_nvfp4(x, blocks, amax, /*packed=*/true, /*fake=*/true);
  return {{q.codes, q.scales.view(at::kFloat8_e4m3fn), q.s_dec, blocks}, q.fake};
}

at::Tensor nvfp4_dequantize(const NVFP4Tensor& q, at::ScalarType dtype) {
  const c10::cuda::CUDAGuard guard(q.codes.device());
  const at::Tensor codes = q.codes.contiguous(), scales = q.scales.contiguous().view(at::kByte);
  const at::Tensor s_dec = q.s_dec.contiguous();
  const int64_t E = codes.dim() == 3 ? codes.size(0) : 1, N = codes.size(-2), K = codes.size(-1) * 2;
  const bool bf16 = dtype == at::kBFloat16;
  at::Tensor out = at::empty(codes.dim() == 3 ? std::vector<int64_t>{E, N, K} : std::vector<int64_t>{N, K},
                             codes.options().dtype(bf16 ? at::kBFloat16 : at::kFloat));
  ck::nvfp4_dequantize(codes.data_ptr<uint8_t>(), scales.data_ptr<uint8_t>(), s_dec.data_ptr<float>(), E, N, K,
                       out.data_ptr(), bf16, stream());
  return bf16 || dtype == at::kFloat ? out : out.to(dtype);
}

NVFP4Operand nvfp4_quantize_rows(const at::Tensor& x_in, const std::vector<int64_t>& off, bool packed) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = prepared(x_in);
  const int64_t T = x.size(0), K = x.size(1), G = static_cast<int64_t>(off.size()) - 1;
  FP4QAT_CHECK(G < INT32_MAX && T < INT32_MAX, "nvfp4_quantize_rows: ", G, " groups of ", T,
               " rows: at most 2^31 - 2 of each");
  // The row offsets and each group's first slice (kernels/cuda_kernels.h), built in pinned host
  // memory and copied asynchronously.
  const int64_t R = ck::nvfp4_rows_slice_rows(in_type(x), K, /*fake=*/true);
  at::Tensor table = at::empty({2 * (G + 1)}, at::TensorOptions().dtype(at::kInt).pinned_memory(true));
  const ck::RowsTable rt = ck::nvfp4_rows_table(off.data(), G, R, table.data_ptr<int32_t>());
  const at::Tensor table_d = table.to(x.device(), /*non_blocking=*/true);
  auto u8 = x.options().dtype(at::kByte);
  NVFP4Operand out;
  out.packed.blocks = Blocks::k1D;
  if (packed) {
    out.packed.codes = at::empty({T, K / 2}, u8);
    out.packed.scales = at::empty({T, K / 16}, u8);
  }
  out.values = at::empty({T, K}, x.options().dtype(at::kBFloat16));
  out.packed.s_dec = at::empty({G}, x.options().dtype(at::kFloat));
  at::Tensor ws = at::empty({static_cast<int64_t>(ck::nvfp4_workspace_bytes(G))}, u8);
  ck::nvfp4_quantize_rows(
      x.data_ptr(), in_type(x), T, K, table_d.data_ptr<int32_t>(), G, R, rt.total_slices, rt.max_slices, ws.data_ptr(),
      packed ? out.packed.codes.data_ptr<uint8_t>() : nullptr, packed ? out.packed.scales.data_ptr<uint8_t>() : nullptr,
      reinterpret_cast<uint16_t*>(out.values.data_ptr()), out.packed.s_dec.data_ptr<float>(), stream());
  if (packed) out.packed.scales = out.packed.scales.view(at::kFloat8_e4m3fn);
  return out;
}

MXFP8Tensor mxfp8_quantize(const at::Tensor& x_in) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = prepared(x_in);
  const int64_t K = x.size(-1), M = x.numel() / K;
  at::Tensor data = at::empty(x.sizes(), x.options().dtype(at::kByte));
  auto ssz = x.sizes().vec();
  ssz.back() = K / 32;
  at::Tensor scales = at::empty(ssz, x.options().dtype(at::kByte));
  ck::mxfp8_quantize(x.data_ptr(), in_type(x), M, K, data.data_ptr<uint8_t>(), scales.data_ptr<uint8_t>(), stream());
  return {data.view(at::kFloat8_e4m3fn), scales};
}

at::Tensor mxfp8_dequantize(const MXFP8Tensor& q, at::ScalarType dtype) {
  const c10::cuda::CUDAGuard guard(q.data.device());
  const at::Tensor d = q.data.contiguous().view(at::kByte), s = q.scales.contiguous();
  const int64_t K = d.size(-1), M = d.numel() / K;
  const bool bf16 = dtype == at::kBFloat16;
  at::Tensor out = at::empty(d.sizes(), d.options().dtype(bf16 ? at::kBFloat16 : at::kFloat));
  ck::mxfp8_dequantize(d.data_ptr<uint8_t>(), s.data_ptr<uint8_t>(), M, K, out.data_ptr(), bf16, stream());
  return bf16 || dtype == at::kFloat ? out : out.to(dtype);
}

}  // namespace fp4qat::cuda
