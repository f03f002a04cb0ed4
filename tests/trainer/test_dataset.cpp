// tests/trainer/test_dataset.cpp — prepared dataset folders (docs/data-format.md, trainer/data.h
// Dataset) and training on them (issue 24): the folder is read back with its loss mask and
// document boundaries; every malformed file is refused naming it; one-document-per-row and packed
// batches are deterministic and mask exactly the masked-in targets inside a document; a packed
// row gives each document the per-token losses it has alone (fp32 on the CPU, 2e-5); objective
// sft's masked mean is the same for grad_accum 2 x B rows as for one batch of 2B rows; resume is
// bit-identical; a dataset whose vocabulary exceeds the model's is refused.
#include <gtest/gtest.h>

#include <cstring>

#include "io/fs.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "io/sha256.h"
#include "kernels/common/check.h"
#include "model/qwen3_moe.h"
#include "tests/common/test_util.h"
#include "tests/trainer/resume_util.h"
#include "trainer/data.h"
#include "trainer/train.h"
#include "tests/trainer/dataset_writer.h"

using fp4qat::test::TempDir;
namespace data = fp4qat::data;
namespace json = fp4qat::json;
using fp4qat::test::Doc;
using fp4qat::test::make_docs;
using fp4qat::test::write_dataset;

namespace {

void expect_error(const std::function<void()>& f, const std::vector<std::string>& needles) {
  try {
    f();
    ADD_FAILURE() << "accepted, expected an error with " << needles[0];
  } catch (const fp4qat::Error& e) {
    for (const auto& n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what();
  }
}

}  // namespace

TEST(Dataset, ReadsFolderAndBatches) {
  TempDir d;
  const auto docs = make_docs(40, 20);
  write_dataset(d.file("ds"), docs, 20);
  data::Dataset ds(d.file("ds"), 0.1, 7);
  EXPECT_EQ(ds.num_documents(), 40);
  EXPECT_EQ(ds.documents(1), 4);
  EXPECT_EQ(ds.vocab_size(), 20);
  EXPECT_EQ(ds.vocab().decode({0, 1, 2, 27}), "abc<|id 27|>");
  const int64_t B = 6, T = 9;
  for (bool packing : {false, true}) {
    const data::DocBatch b = ds.batch(0, 3, B, T, packing, true);
    const data::DocBatch again = ds.batch(0, 3, B, T, packing, true);
    EXPECT_TRUE(at::equal(b.ids, again.ids));
    EXPECT_FALSE(at::equal(b.ids, ds.batch(0, 4, B, T, packing, true).ids));
    ASSERT_EQ(b.ids.sizes(), (std::vector<int64_t>{B, T + 1}));
    ASSERT_EQ(b.loss_mask.sizes(), (std::vector<int64_t>{B, T}));
    EXPECT_EQ(b.positions.defined(), packing);
    EXPECT_EQ(b.loss_tokens, b.loss_mask.sum().item<int64_t>());
    // every row: documents of the train split (the first 36) back to back, each with its own mask
    // on targets 1.. of the document, then padding (eos, masked out)
    for (int64_t r = 0; r < B; ++r) {
      int64_t t = 0, seg = 0;
      while (t <= T) {
        int found = -1;
        for (int k = 0; k < 36 && found < 0; ++k) {
          const auto& doc = docs[static_cast<size_t>(k)];
          bool ok = true;
          for (size_t j = 0; j < doc.ids.size() && t + static_cast<int64_t>(j) <= T && ok; ++j)
            ok = b.ids[r][t + static_cast<int64_t>(j)].item<int64_t>() == doc.ids[j];
          if (ok && (t == 0 || t + static_cast<int64_t>(doc.ids.size()) <= T + 1)) found = k;
        }
        if (found < 0 || (t > 0 && !packing)) break;  // the rest is padding
        const auto& doc = docs[static_cast<size_t>(found)];
        const int64_t len = std::min<int64_t>(static_cast<int64_t>(doc.ids.size()), T + 1 - t);
        for (int64_t j = 0; j < len; ++j) {
          if (t + j >= 1) {
            EXPECT_EQ(b.loss_mask[r][t + j - 1].item<bool>(), j > 0 && doc.mask[j] == 1) << r << " " << t + j;
          }
          if (t + j < T) {
            EXPECT_TRUE(b.real[r][t + j].item<bool>()) << r << " " << t + j;  // a document's token
          }
          if (packing && t + j < T) {
            EXPECT_EQ(b.positions[r][t + j].item<int64_t>(), j);
            EXPECT_EQ(b.segments[r][t + j].item<int64_t>(), seg);
          }
        }
        t += len;
        ++seg;
      }
      for (int64_t j = std::max<int64_t>(t, 1); j <= T; ++j) EXPECT_FALSE(b.loss_mask[r][j - 1].item<bool>());
      for (int64_t j = t; j < T; ++j) EXPECT_FALSE(b.real[r][j].item<bool>()) << "padding " << r << " " << j;
    }
  }
  // use_mask false (objective lm): every target inside a document counts
  const data::DocBatch all = ds.batch(0, 3, B, T, false, false), sft = ds.batch(0, 3, B, T, false, true);
  EXPECT_TRUE(at::equal(all.loss_mask.logical_and(sft.loss_mask), sft.loss_mask));
  EXPECT_GT(all.loss_tokens, sft.loss_tokens);
  // grad accumulation: micro-batches of B rows are the rows of one batch of 2B
  const at::Tensor two = at::cat({ds.batch(0, 6, 3, T, true, true).ids, ds.batch(0, 7, 3, T, true, true).ids});
  EXPECT_TRUE(at::equal(two, ds.batch(0, 3, 6, T, true, true).ids));
}

TEST(Dataset, RefusesMalformedFolders) {
  TempDir d;
  const auto docs = make_docs(10, 20);
  const std::string good = d.file("good");
  write_dataset(good, docs, 20);
  int case_no = 0;
  // copies the good folder, lets `edit` change one file, expects the open to fail naming it
  auto bad = [&](const std::string& file, const std::function<void(std::string&)>& edit, const std::string& needle) {
    const std::string dir = d.file("bad" + std::to_string(case_no++));
    fp4qat::fs::make_dirs(dir);
    for (const char* f : {"tokens.bin", "mask.bin", "docs.bin", "vocab.bin", "dataset.json"}) {
      std::string bytes = fp4qat::test::read_bytes(good + "/" + f);
      if (file == f) edit(bytes);
      fp4qat::test::write_bytes(dir + "/" + f, bytes);
    }
    SCOPED_TRACE(file + ": " + needle);
    expect_error([&] { data::Dataset ds(dir, 0.1, 1); }, {file, needle});
  };
  auto set_u64 = [](size_t at, uint64_t v) { return [at, v](std::string& s) { std::memcpy(&s[at], &v, 8); }; };
  for (const char* f : {"tokens.bin", "mask.bin", "docs.bin", "vocab.bin"})
    bad(
        f, [](std::string& s) { s[0] = 'X'; }, "magic");
  bad(
      "tokens.bin", [](std::string& s) { s.pop_back(); }, "data bytes");
  bad(
      "tokens.bin", [](std::string& s) { s[8] = 3; }, "2 or 4");
  bad(
      "tokens.bin", [](std::string& s) { s[12] = 1; }, "reserved");
  bad(
      "tokens.bin", [](std::string& s) { s[24] = 25; }, "outside the dataset's vocab_size 20");
  bad("tokens.bin", set_u64(16, ~0ull / 2), "data bytes");  // a huge count: refused, never allocated
  bad(
      "mask.bin", [](std::string& s) { s[30] = 2; }, "must be 0 or 1");
  bad(
      "mask.bin", [](std::string& s) { s.resize(s.size() - 2); }, "data bytes");
  bad("docs.bin", set_u64(24 + 8 * 3, 1), "out of order");
  bad("docs.bin", set_u64(24 + 8 * 10, 5), "out of order");
  bad("docs.bin", set_u64(24, 1), "offsets[0]");
  bad(
      "docs.bin", [](std::string& s) { s.resize(s.size() - 8); }, "data bytes");
  bad("vocab.bin", set_u64(24 + 8 * 20, 1000), "offsets[V]");
  bad("vocab.bin", set_u64(16, ~0ull / 4), "too few");
  bad(
      "vocab.bin", [](std::string& s) { s[24 + 8 * 21 + 3] = 3; }, "flag");
  auto manifest = [](const std::string& from, const std::string& to) {
    return [from, to](std::string& s) { s.replace(s.find(from), from.size(), to); };
  };
  bad("dataset.json", manifest("\"version\": 1", "\"version\": 2"), "version 2");
  bad("dataset.json", manifest("\"num_loss_tokens\": ", "\"num_loss_tokens\": 1"), "num_loss_tokens");
  bad("dataset.json", manifest("\"vocab_size\": 20", "\"vocab_size\": 19"), "outside");
  bad("dataset.json", manifest("\"num_documents\": 10", "\"num_documents\": 11"), "11 documents");
  bad("dataset.json", manifest("{", "["), "dataset.json");
  bad("dataset.json", manifest("\"format\"", "\"formax\""), "format");
  // a missing file
  const std::string gone = d.file("gone");
  write_dataset(gone, docs, 20);
  std::remove((gone + "/mask.bin").c_str());
  expect_error([&] { data::Dataset ds(gone, 0.1, 1); }, {"mask.bin"});
}

// A packed row gives every document exactly the losses it has alone in a row (fp32, 2e-5): the
// attention does not cross documents and positions restart. Without the packing layout the
// later documents' losses change (the test can fail).
TEST(Dataset, PackedLossesEqualOneDocumentPerRow) {
  TempDir d;
  const auto docs = make_docs(30, 32);
  write_dataset(d.file("ds"), docs, 32);
  data::Dataset ds(d.file("ds"), 0.0, 3);
  fp4qat::config::Config c = fp4qat::test::small_moe_run(d.file("run"));
  fp4qat::model::Qwen3Moe m(c.model, 11);
  fp4qat::model::LinearPolicy plain;
  const int64_t T = 31;
  const data::DocBatch b = ds.batch(0, 0, 3, T, true, false);
  const at::Tensor in = b.ids.narrow(1, 0, T), tg = b.ids.narrow(1, 1, T);
  auto ce_of = [](const at::Tensor& logits, const at::Tensor& targets) {  // [B, T]
    return at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}), targets.reshape({-1}), {}, at::Reduction::None)
        .view(targets.sizes());
  };
  fp4qat::model::Packing pk{b.positions, b.segments};
  const at::Tensor packed = ce_of(m.forward(in, at::kFloat, plain, nullptr, &pk).logits, tg);
  const at::Tensor causal = ce_of(m.forward(in, at::kFloat, plain).logits, tg);
  int checked = 0;
  double worst = 0, worst_plain = 0;
  for (int64_t r = 0; r < 3; ++r) {
    const at::Tensor seg = b.segments[r];
    const int64_t nseg = seg.max().item<int64_t>();  // the last segment is padding (or a document)
    for (int64_t s = 0; s < nseg; ++s) {
      const at::Tensor idx = (seg == s).nonzero().reshape({-1});
      const int64_t a = idx[0].item<int64_t>(), len = idx.numel();
      if (a + len >= T) continue;  // the document reaches the row's end: its last target is outside
      const at::Tensor alone_ids = b.ids[r].narrow(0, a, len + 1).unsqueeze(0);
      // targets inside the document: tokens a+1 .. a+len-1 (the next document's first token is not one)
      const at::Tensor alone =
          ce_of(m.forward(alone_ids.narrow(1, 0, len), at::kFloat, plain).logits, alone_ids.narrow(1, 1, len))[0];
      const at::Tensor n = alone.narrow(0, 0, len - 1);
      worst = std::max(worst, (packed[r].narrow(0, a, len - 1) - n).abs().max().item<double>());
      if (s > 0) worst_plain = std::max(worst_plain, (causal[r].narrow(0, a, len - 1) - n).abs().max().item<double>());
      ++checked;
    }
  }
  EXPECT_GE(checked, 4);
  EXPECT_LT(worst, 2e-5);
  EXPECT_GT(worst_plain, 1e-3) << "plain causal attention should see the earlier documents";
}

namespace {
fp4qat::config::Config sft_run(const std::string& data_dir, const std::string& out) {
  fp4qat::config::Config c = fp4qat::test::small_moe_run(out);
  c.objective = "sft";
  c.data.kind = "tokens";
  c.data.path = data_dir;
  c.data.packing = true;
  c.data.val_fraction = 0.1;
  c.train.dtype = "fp32";
  c.train.seq_len = 24;
  c.train.steps = 4;
  c.optim.warmup_steps = 1;
  return c;
}
}  // namespace

// objective sft: the mean over the masked-in targets of the whole step. grad_accum 2 x B rows
// equals one batch of 2B rows (fp32 on the CPU: losses within 1e-6 and gradient norms within 1e-5
// relative, weights within 1e-7 after 4 steps)
// although the micro-batches hold different numbers of targets (a mean of per-micro-batch means
// would differ).
TEST(TrainSft, GradAccumEqualsDoubleBatch) {
  TempDir d;
  write_dataset(d.file("ds"), make_docs(60, 32), 32);
  fp4qat::train::Options o;
  o.quiet = true;
  fp4qat::config::Config a = sft_run(d.file("ds"), d.file("a"));
  a.model.router_aux_loss_coef = 0;  // the Switch loss is per micro-batch, not a token mean
  a.optim.eps = 1.0;  // AdamW's step ~ lr * g (not lr * sign(g), which amplifies rounding of tiny gradients)
  a.train.batch_size = 8;
  fp4qat::config::Config b = a;
  b.train.out_dir = d.file("b");
  b.train.batch_size = 4;
  b.train.grad_accum = 2;
  {
    data::Dataset ds(d.file("ds"), 0.1, a.train.seed);
    EXPECT_NE(ds.batch(0, 0, 4, 24, true, true).loss_tokens, ds.batch(0, 1, 4, 24, true, true).loss_tokens);
  }
  const auto ra = fp4qat::train::run(a, o), rb = fp4qat::train::run(b, o);
  ASSERT_EQ(ra.steps.size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_NEAR(rb.steps[i].loss, ra.steps[i].loss, 1e-6 * ra.steps[i].loss) << "step " << i + 1;
    EXPECT_NEAR(rb.steps[i].grad_norm, ra.steps[i].grad_norm, 1e-5 * ra.steps[i].grad_norm) << "step " << i + 1;
  }
  fp4qat::st::Reader wa(d.file("a/checkpoints/step-4/model.safetensors")),
      wb(d.file("b/checkpoints/step-4/model.safetensors"));
  for (const auto& t : wa.tensors())
    EXPECT_LT((wa.view(t.name) - wb.view(t.name)).abs().max().item<double>(), 1e-7) << t.name;
  EXPECT_GT(ra.steps[0].loss, 0);
}

TEST(TrainSft, ResumeIsBitIdenticalAndLossFalls) {
  TempDir d;
  write_dataset(d.file("ds"), make_docs(60, 32), 32);
  fp4qat::train::Options o;
  o.quiet = true;
  fp4qat::config::Config a = sft_run(d.file("ds"), d.file("a"));
  a.train.steps = 6;
  a.train.grad_accum = 2;
  a.train.eval_every = 3;
  const auto ra = fp4qat::train::run(a, o);
  fp4qat::config::Config b = a;
  b.train.out_dir = d.file("b");
  const auto rb = fp4qat::test::run_stopped_and_resumed(b, o, 2);
  ASSERT_EQ(rb.size(), ra.steps.size());
  for (size_t i = 0; i < ra.steps.size(); ++i) {
    const auto& s = rb[i];
    EXPECT_EQ(s.loss, ra.steps[i].loss) << "step " << i + 1;
    EXPECT_EQ(s.grad_norm, ra.steps[i].grad_norm) << "step " << i + 1;
  }
  ASSERT_FALSE(ra.evals.empty());
  EXPECT_TRUE(std::isfinite(ra.evals.back().val_loss));
  EXPECT_LT(ra.steps.back().loss, ra.steps.front().loss);
  fp4qat::st::Reader wa(d.file("a/checkpoints/step-6/model.safetensors")),
      wb(d.file("b/checkpoints/step-6/model.safetensors"));
  for (const auto& t : wa.tensors()) EXPECT_TRUE(fp4qat::test::bytes_equal(wb.view(t.name), wa.view(t.name))) << t.name;
}

TEST(TrainSft, RefusesMismatchedVocabularyAndFlatFiles) {
  TempDir d;
  write_dataset(d.file("ds"), make_docs(20, 40), 40);
  fp4qat::train::Options o;
  o.quiet = true;
  fp4qat::config::Config c = sft_run(d.file("ds"), d.file("run"));  // model.vocab_size 32
  expect_error([&] { fp4qat::train::run(c, o); }, {"dataset.json", "40", "32"});
  data::TokenFile::write(d.file("flat.bin"), {1, 2, 3, 4, 5, 6, 7, 8}, 2);
  c.data.path = d.file("flat.bin");
  expect_error([&] { fp4qat::train::run(c, o); }, {"flat.bin", "objective sft"});
  c.objective = "sft";
  c.data.kind = "synthetic";
  expect_error([&] { fp4qat::config::validate(c); }, {"objective sft"});
}

// The tokenizer identity of prepared datasets (sha256 of tokenizer.json): FIPS 180-4 vectors, and
// a file hashes as its bytes.
TEST(Sha256, KnownVectorsAndFiles) {
  EXPECT_EQ(fp4qat::sha256::hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(fp4qat::sha256::hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(fp4qat::sha256::hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  const std::string million(1000000, 'a');
  EXPECT_EQ(fp4qat::sha256::hex(million), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  TempDir d;
  fp4qat::test::write_bytes(d.file("m"), million);
  EXPECT_EQ(fp4qat::sha256::file_hex(d.file("m")), fp4qat::sha256::hex(million));
  EXPECT_THROW(fp4qat::sha256::file_hex(d.file("missing")), fp4qat::Error);
}
