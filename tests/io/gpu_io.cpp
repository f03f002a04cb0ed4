// tests/io/gpu_io.cpp — (label gpu) the rollout loader's one-copy read: a safetensors file's data
// section read into device memory (st::Reader::data_on) gives every tensor byte for byte, aligned
// or not; hf::FolderReader::view_on the same through the folder. The timeline (trainer/timeline.h)
// records the GPU's kernels on CUDA.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "io/hf_folder.h"
#include "io/safetensors.h"
#include "tests/common/test_util.h"
#include "trainer/timeline.h"

using fp4qat::test::TempDir;
namespace st = fp4qat::st;

TEST(GpuIo, DataSectionOnTheDeviceEqualsTheFile) {
  FP4QAT_REQUIRE_GPU();
  TempDir d;
  const std::string p = d.file("model.safetensors");
  const at::Tensor big = at::randn({5 * 1024 * 1024 + 3});  // ~20 MiB: three read chunks
  const at::Tensor odd = at::randint(0, 255, {9}, at::kByte);
  const at::Tensor f = at::randn({3, 7});
  st::write_file(p, {{"odd", odd}, {"f", f}, {"big", big}, {"e", at::empty({0})}});
  st::Reader r(p), mapped(p);  // mapped: views over the file's mapping
  const at::Tensor data = r.data_on(at::kCUDA);
  ASSERT_TRUE(data.is_cuda());
  for (const auto& t : r.tensors()) {
    const at::Tensor v = r.view_in(data, t.name);
    EXPECT_TRUE(v.is_cuda()) << t.name;
    EXPECT_TRUE(fp4qat::test::bytes_equal(v.cpu(), mapped.view(t.name))) << t.name;
    // After data_on, view() reads the pinned host copy: the same bytes.
    EXPECT_TRUE(fp4qat::test::bytes_equal(r.view(t.name), mapped.view(t.name))) << t.name;
  }
  EXPECT_TRUE(fp4qat::test::bytes_equal(r.view("f"), f));
  fp4qat::hf::FolderReader folder(d.path());
  EXPECT_TRUE(fp4qat::test::bytes_equal(folder.view_on("f", at::kCUDA).cpu(), f));
  EXPECT_TRUE(fp4qat::test::bytes_equal(folder.view_on("big", at::kCUDA).cpu(), big));
}

TEST(GpuIo, TimelineRecordsTheGpuKernels) {
  FP4QAT_REQUIRE_GPU();
  const at::Tensor a = at::randn({512, 512}, at::kCUDA);
  fp4qat::train::Timeline t(at::kCUDA);
  at::Tensor c = at::mm(a, a);
  for (int i = 0; i < 3; ++i) c = at::relu(at::mm(c, a));
  const std::string text = t.stop(1, "mm");
  EXPECT_NE(text.find("GPU activity by kind"), std::string::npos) << text;
  EXPECT_NE(text.find("gemm"), std::string::npos) << text;
  EXPECT_NE(text.find("GPU busy"), std::string::npos) << text;
  EXPECT_NE(text.find("host self time by op"), std::string::npos) << text;
}
