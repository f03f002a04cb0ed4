// tests/qat/gpu_export.cpp — (label gpu) the asynchronous export's staging from CUDA tensors: the
// quantization and the copies into pinned host memory run on a side stream, and the folder
// equals the CPU writer's byte for byte, also when the weights are changed on the training
// stream right after fence() (the change is ordered after the side stream's reads).
#include <ATen/cuda/CUDAContext.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "qat/export.h"
#include "io/fs.h"
#include "io/safetensors.h"
#include "tests/common/test_util.h"

using namespace fp4qat;
using fp4qat::test::bytes_equal;

namespace {

// Same files; safetensors compared tensor by tensor (the message names the first ones that
// differ), other files byte for byte.
void expect_same_folder(const std::string& a, const std::string& b) {
  const auto fa = fs::list_dir(a), fb = fs::list_dir(b);
  ASSERT_EQ(fa, fb);
  for (const auto& file : fa) {
    if (file.size() > 12 && file.compare(file.size() - 12, 12, ".safetensors") == 0) {
      const st::Reader ra(a + "/" + file), rb(b + "/" + file);
      ASSERT_EQ(ra.tensors().size(), rb.tensors().size()) << file;
      int bad = 0;
      for (const auto& ti : ra.tensors()) {
        ASSERT_TRUE(rb.contains(ti.name)) << file << ": " << ti.name;
        if (!bytes_equal(ra.view(ti.name), rb.view(ti.name)) && ++bad <= 5)
          ADD_FAILURE() << file << ": tensor " << ti.name << " differs";
      }
      EXPECT_EQ(bad, 0) << file;
    } else {
      EXPECT_TRUE(test::read_bytes(a + "/" + file) == test::read_bytes(b + "/" + file)) << file << " differs";
    }
  }
}

}  // namespace

TEST(GpuStagedFolder, EqualsTheCpuWriterWhileTheWeightsChange) {
  FP4QAT_REQUIRE_GPU();
  test::TempDir d;
  const int64_t E = 16, R = 256, K = 1024;
  const std::vector<std::string> gu = test::expert_modules(0, E, true), dn = test::expert_modules(0, E, false);
  std::vector<float> ia_gu(2 * E), ia_dn(E);
  for (int64_t i = 0; i < 2 * E; ++i) ia_gu[i] = 0.25f * (i + 1);
  for (int64_t i = 0; i < E; ++i) ia_dn[i] = 3.0f + i;
  for (auto f : {qat::Format::kNVFP4, qat::Format::kMXFP8, qat::Format::kBF16}) {
    SCOPED_TRACE(qat::to_string(f));
    const at::Tensor wgu_cpu = at::randn({E, 2 * R, K}), wdn_cpu = at::randn({E, K, R}) * 0.1;
    const at::Tensor norm_cpu = at::rand({K}) + 0.5;
    qat::ExportOptions opt;
    opt.format = f;
    opt.config_json = R"({"model_type": "qwen3_moe"})";
    const std::string a = d.file(std::string("cpu-") + qat::to_string(f)),
                      b = d.file(std::string("gpu-") + qat::to_string(f));
    fs::make_dir(a);
    {
      qat::HfFolderWriter w(a, opt);
      w.add_quantized(gu, 2, wgu_cpu, std::nullopt, ia_gu);
      w.add_quantized(dn, 1, wdn_cpu, std::nullopt, ia_dn);
      w.add_plain("model.norm.weight", norm_cpu);
      w.finish();
    }
    // Round 0 without a buffer pool; rounds 1 and 2 through one pool (round 2 reuses round 1's
    // pinned buffers).
    auto pool = std::make_shared<qat::HostBufferPool>();
    int64_t pooled = 0;
    for (int round = 0; round < 3; ++round) {
      SCOPED_TRACE(::testing::Message() << "round " << round);
      at::Tensor wgu = wgu_cpu.cuda(), wdn = wdn_cpu.cuda(), norm = norm_cpu.cuda();
      // Keep the training stream busy so that the side stream really runs beside it.
      at::Tensor busy = at::randn({4096, 4096}, at::TensorOptions().device(at::kCUDA));
      for (int i = 0; i < 8; ++i) busy = at::mm(busy, busy).tanh_();
      const std::string out = b + "-" + std::to_string(round);
      fs::make_dir(out);
      {
        qat::StagedFolder s(opt, round == 0 ? nullptr : pool);
        s.add_quantized(gu, 2, wgu, std::nullopt, at::tensor(ia_gu).cuda());
        s.add_quantized(dn, 1, wdn, std::nullopt, at::tensor(ia_dn).cuda());
        s.add_plain("model.norm.weight", norm);
        s.seal();
        s.fence();
        wgu.add_(1.0);  // the optimizer step, in stream order after the export's reads
        wdn.mul_(3.0);
        norm.mul_(2.0);
        s.write(out);
      }
      if (round == 1) pooled = pool->allocated_bytes();
      if (round >= 1) {
        EXPECT_GT(pooled, 0);
        EXPECT_EQ(pool->allocated_bytes(), pooled);  // nothing new allocated in round 2
      }
      expect_same_folder(a, out);
    }
  }
}
