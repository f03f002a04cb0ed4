// tests/io/test_safetensors.cpp — io/safetensors.h: round trips, the on-disk layout of
// checkpoint-format.md, and every validation the spec lists (clear error, no crash).
#include <gtest/gtest.h>

#include <cstring>

#include "kernels/common/check.h"
#include "io/safetensors.h"
#include "tests/common/test_util.h"

using fp4qat::test::TempDir;
namespace st = fp4qat::st;

namespace {

// A file with a hand-written header and `data_len` data bytes.
std::string make_file(const std::string& header, size_t data_len, bool pad = true) {
  std::string h = header;
  while (pad && h.size() % 8) h.push_back(' ');
  std::string out(8, '\0');
  uint64_t n = h.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + h + std::string(data_len, '\x01');
}

void expect_rejected(const std::string& bytes, const std::string& needle) {
  TempDir d;
  const std::string p = d.file("bad.safetensors");
  fp4qat::test::write_bytes(p, bytes);
  try {
    st::Reader r(p);
    FAIL() << "accepted a bad file; expected an error containing '" << needle << "'";
  } catch (const fp4qat::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    EXPECT_NE(msg.find(p), std::string::npos) << "the message must name the file: " << msg;
  }
}

}  // namespace

TEST(Safetensors, RoundTripAllDtypesAndLayout) {
  TempDir d;
  const std::string p = d.file("a.safetensors");
  std::vector<std::pair<std::string, at::Tensor>> ts = {
      {"w.bf16", at::randn({3, 5}).to(at::kBFloat16)},
      {"w.f32", at::randn({2, 2, 4})},
      {"w.u8", at::randint(0, 255, {7}, at::kByte)},
      {"w.f8", at::randn({4, 4}).to(at::kFloat8_e4m3fn)},
      {"scalar", at::full({}, 0.125f)},
      {"empty", at::zeros({0, 4})},
      {"i64", at::arange(5, at::kLong)},
  };
  st::write_file(p, ts);
  const std::string bytes = fp4qat::test::read_bytes(p);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u) << "header length must be padded to a multiple of 8";
  EXPECT_EQ(bytes[8], '{');
  st::Reader r(p);
  EXPECT_EQ(r.metadata().at("format").as_string(), "pt");
  ASSERT_EQ(r.tensors().size(), ts.size());
  for (const auto& [name, t] : ts) {
    const at::Tensor got = r.view(name);
    EXPECT_TRUE(fp4qat::test::bytes_equal(got, t)) << name;
  }
  EXPECT_EQ(r.find("scalar")->shape.size(), 0u);
  EXPECT_EQ(st::dtype_name(r.find("w.f8")->dtype), std::string("F8_E4M3"));
  // No temporary files are left beside the output.
  EXPECT_EQ(d.list(), std::vector<std::string>{"a.safetensors"});
}

TEST(Safetensors, ViewOutlivesReader) {
  TempDir d;
  const std::string p = d.file("a.safetensors");
  const at::Tensor t = at::arange(100, at::kFloat);
  st::write_file(p, {{"t", t}});
  at::Tensor v;
  {
    st::Reader r(p);
    v = r.view("t");
  }
  EXPECT_TRUE(at::equal(v, t));
}

// data_on / view_in (the rollout loader's one-copy read): every tensor equals view(), byte for
// byte, also where an odd-sized tensor leaves the next one's offset unaligned (then a copy), a
// file larger than one 8 MiB read chunk, and an empty tensor; a foreign data tensor is refused.
TEST(Safetensors, DataSectionViewsEqualTheTensors) {
  TempDir d;
  const std::string p = d.file("a.safetensors");
  const at::Tensor big = at::randn({3 * 1024 * 1024 + 5});  // ~12 MiB of float32: two read chunks
  const at::Tensor odd = at::randint(0, 255, {7}, at::kByte);
  const at::Tensor f = at::randn({3, 5});
  const at::Tensor h = at::randn({4, 2}).to(at::kBFloat16);
  st::write_file(p, {{"odd", odd}, {"f", f}, {"h", h}, {"empty", at::empty({0, 3})}, {"big", big}});
  st::Reader r(p);
  ASSERT_NE(r.find("f")->begin % 4, 0u) << "the test needs an unaligned float32 tensor";
  const at::Tensor data = r.data_on(at::kCPU);
  for (const auto& t : r.tensors()) {
    const at::Tensor v = r.view_in(data, t.name), w = r.view(t.name);
    EXPECT_EQ(v.sizes(), w.sizes()) << t.name;
    EXPECT_EQ(v.scalar_type(), w.scalar_type()) << t.name;
    EXPECT_TRUE(at::equal(v, w)) << t.name;
  }
  EXPECT_TRUE(at::equal(r.view_in(data, "big"), big));
  try {
    r.view_in(data.narrow(0, 0, 8), "f");
    FAIL() << "accepted a data tensor that is not the file's";
  } catch (const fp4qat::Error& e) {
    EXPECT_NE(std::string(e.what()).find("data section"), std::string::npos) << e.what();
  }
  EXPECT_THROW(r.view_in(data, "nope"), fp4qat::Error);
}

// The writer's windows and ranges: thousands of small tensors (an NVFP4 expert stack's layout),
// non-contiguous ones among them (copied, so they count against the copy window), zero-size ones,
// and enough bytes for several write ranges. The file is the same bytes whatever the window, and
// every tensor reads back equal.
TEST(Safetensors, WindowsAndRangesWriteTheSameBytes) {
  TempDir d;
  at::manual_seed(7);
  std::vector<std::pair<std::string, at::Tensor>> ts;
  for (int i = 0; i < 3000; ++i) {
    const std::string n = "m." + std::to_string(i);
    if (i % 7 == 3) ts.emplace_back(n, at::randn({24, 16}).t());  // non-contiguous
    else if (i % 11 == 5) ts.emplace_back(n, at::empty({0, 4}));
    else if (i % 2) ts.emplace_back(n, at::randint(0, 255, {1 + i % 13}, at::kByte));
    else ts.emplace_back(n, at::randn({i % 5 + 1, 257}).to(at::kBFloat16));
  }
  ts.emplace_back("big", at::randn({9 * 1024 * 1024 + 3}));  // ~36 MiB: more than one write range
  const std::string a = d.file("a.safetensors"), b = d.file("b.safetensors");
  st::write_file(a, ts);
  st::write_file(b, ts, fp4qat::json::Value(), /*copy_window=*/4096);  // a window every few tensors
  const std::string ba = fp4qat::test::read_bytes(a), bb = fp4qat::test::read_bytes(b);
  EXPECT_EQ(ba.size(), bb.size());
  EXPECT_TRUE(ba == bb) << "the copy window changed the file's bytes";
  st::Reader r(b);
  ASSERT_EQ(r.tensors().size(), ts.size());
  for (const auto& [n, t] : ts) {
    const at::Tensor v = r.view(n);
    ASSERT_EQ(v.sizes(), t.sizes()) << n;
    EXPECT_TRUE(at::equal(v, t)) << n;
  }
}

TEST(Safetensors, WriterRefusesMissingFolderAndDuplicates) {
  TempDir d;
  EXPECT_THROW(st::write_file(d.file("no/such/dir/x.safetensors"), {{"a", at::zeros({1})}}), fp4qat::Error);
  EXPECT_THROW(st::write_file(d.file("x.safetensors"), {{"a", at::zeros({1})}, {"a", at::zeros({1})}}), fp4qat::Error);
  EXPECT_TRUE(d.list().empty()) << "nothing may be left behind on error";
}

TEST(Safetensors, RejectsMissingAndTruncatedFiles) {
  TempDir d;
  EXPECT_THROW(st::Reader(d.file("missing.safetensors")), fp4qat::Error);
  expect_rejected("", "truncated");
  expect_rejected(std::string("\x10\x00\x00", 3), "truncated");
  // A valid file cut short: the data section no longer covers the tensors.
  const std::string good = make_file(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 16);
  expect_rejected(good.substr(0, good.size() - 4), "out of range");
}

TEST(Safetensors, RejectsHeaderLongerThanFileOrOverLimit) {
  std::string f(8, '\0');
  f[0] = 100;  // header of 100 bytes, file has none
  expect_rejected(f + "{}", "longer than the file");
  std::string huge(8, '\0');
  const uint64_t n = 200ull * 1000 * 1000;
  for (int i = 0; i < 8; ++i) huge[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  expect_rejected(huge + "{}", "100 MB");
  std::string max64(8, '\xff');
  expect_rejected(max64 + "{}", "100 MB");
}

TEST(Safetensors, RejectsInvalidJsonAndBadEntries) {
  expect_rejected(make_file(R"({"a":{"dtype":"F32",)", 0), "invalid JSON");
  expect_rejected(make_file(R"([1,2])", 0), "does not start with '{'");
  expect_rejected(make_file(R"({"a":{"dtype":"Q7","shape":[1],"data_offsets":[0,4]}})", 4), "unknown dtype 'Q7'");
  expect_rejected(make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", 4), "shape x dtype");
  expect_rejected(make_file(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4), "negative");
  expect_rejected(make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4000]}})", 4), "out of range");
  expect_rejected(make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})", 4), "invalid data_offsets");
  expect_rejected(make_file(R"({"a":{"dtype":"U8","shape":[4294967296,4294967296,16],"data_offsets":[0,4]}})", 4),
                  "overflowing");
  expect_rejected(make_file(R"({"a":{"dtype":"F32","shape":[1]}})", 4), "data_offsets");
  expect_rejected(make_file(R"({"__metadata__":{"format":1}})", 0), "__metadata__");
  // A header that is not UTF-8 (issue 23 item 10: the reference safetensors library refuses it),
  // in a tensor name and in metadata.
  expect_rejected(make_file("{\"a\xff\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4), "UTF-8");
  expect_rejected(make_file("{\"__metadata__\":{\"k\":\"\xc3\x28\"},\"a\":{\"dtype\":\"F32\",\"shape\":[1],"
                            "\"data_offsets\":[0,4]}}",
                            4),
                  "UTF-8");
}

TEST(Safetensors, RejectsOverlapsHolesAndTrailingBytes) {
  expect_rejected(make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                            R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                            12),
                  "overlap");
  expect_rejected(make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                            R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                            12),
                  "hole");
  expect_rejected(make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 8), "trailing");
}
