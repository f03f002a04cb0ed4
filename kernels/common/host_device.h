// kernels/common/host_device.h — FP4QAT_HD: a function the CPU references and the CUDA kernels
// share (the same operations in the same order on both sides): __host__ __device__ under nvcc,
// plain inline elsewhere.
#pragma once

#if defined(__CUDACC__)
#define FP4QAT_HD __host__ __device__ __forceinline__
#else
#define FP4QAT_HD inline
#endif
