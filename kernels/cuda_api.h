// kernels/cuda_api.h — CUDA implementations behind kernels/quantize.h, on at::Tensor: declared
// here, defined in kernels/cuda_api.cpp over the raw-pointer launchers of kernels/cuda_kernels.h
// (kernels/nvfp4/, kernels/mxfp8/). Without CUDA support compiled in, kernels/cuda_stubs.cpp
// defines each to throw a clear error.
#pragma once
#include "kernels/quantize.h"

namespace fp4qat::cuda {

at::Tensor global_amax(const at::Tensor& x);
at::Tensor row_amax(const at::Tensor& x);
NVFP4Tensor nvfp4_quantize(const at::Tensor& x, Blocks blocks, const std::optional<at::Tensor>& amax,
                           const NVFP4Rule& rule);
at::Tensor nvfp4_dequantize(const NVFP4Tensor& q, at::ScalarType dtype);
NVFP4FakeQuant nvfp4_fake_quantize(const at::Tensor& x, Blocks blocks, const std::optional<at::Tensor>& amax,
                                   const NVFP4Rule& rule);
NVFP4Operand nvfp4_quantize_and_fake(const at::Tensor& x, Blocks blocks, const std::optional<at::Tensor>& amax,
                                     const NVFP4Rule& rule);
NVFP4Operand nvfp4_quantize_rows(const at::Tensor& x, const std::vector<int64_t>& off, bool packed,
                                 const NVFP4Rule& rule);
MXFP8Tensor mxfp8_quantize(const at::Tensor& x);
at::Tensor mxfp8_dequantize(const MXFP8Tensor& q, at::ScalarType dtype);

}  // namespace fp4qat::cuda
