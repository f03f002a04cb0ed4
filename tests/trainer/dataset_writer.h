// tests/trainer/dataset_writer.h — writes a prepared dataset folder by docs/data-format.md (as
// scripts/prepare_data does) from token ids and masks, for the C++ tests of its reader
// (test_dataset.cpp), the fuzz target (tests/io/test_fuzz.cpp) and multi-process SFT (test_dist.cpp). Token i's bytes in vocab.bin
// are the letter 'a' + i % 26; EOS is the last id. make_docs: documents of a prompt and a response.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "io/fs.h"
#include "io/json.h"
#include "tests/common/test_util.h"

namespace fp4qat::test {

struct Doc {
  std::vector<int64_t> ids;
  std::vector<uint8_t> mask;
};

template <typename T>
inline void put_le(std::string& s, T v) {
  s.append(reinterpret_cast<const char*>(&v), sizeof v);
}
inline std::string bin_header(const char* magic, uint32_t width, uint64_t n) {
  std::string s(magic, 8);
  put_le<uint32_t>(s, width);
  put_le<uint32_t>(s, 0);
  put_le<uint64_t>(s, n);
  return s;
}

inline void write_dataset(const std::string& dir, const std::vector<Doc>& docs, int64_t vocab) {
  fs::make_dirs(dir);
  std::string tok = bin_header("FP4QTOK1", 2, 0), msk = bin_header("FP4QMSK1", 1, 0),
              off = bin_header("FP4QDOC1", 8, 0);
  uint64_t n = 0, ones = 0, mn = ~0ull, mx = 0;
  put_le<uint64_t>(off, 0);
  for (const Doc& d : docs) {
    for (size_t i = 0; i < d.ids.size(); ++i) {
      put_le<uint16_t>(tok, static_cast<uint16_t>(d.ids[i]));
      put_le<uint8_t>(msk, d.mask[i]);
      ones += d.mask[i];
    }
    n += d.ids.size();
    mn = std::min<uint64_t>(mn, d.ids.size());
    mx = std::max<uint64_t>(mx, d.ids.size());
    put_le<uint64_t>(off, n);
  }
  std::memcpy(&tok[16], &n, 8);
  std::memcpy(&msk[16], &n, 8);
  const uint64_t D1 = docs.size() + 1;
  std::memcpy(&off[16], &D1, 8);
  std::string voc = bin_header("FP4QVOC1", 8, static_cast<uint64_t>(vocab));
  for (int64_t i = 0; i <= vocab; ++i) put_le<uint64_t>(voc, static_cast<uint64_t>(i));
  voc.append(static_cast<size_t>(vocab), '\0');
  for (int64_t i = 0; i < vocab; ++i) voc.push_back(static_cast<char>('a' + i % 26));
  write_bytes(dir + "/tokens.bin", tok);
  write_bytes(dir + "/mask.bin", msk);
  write_bytes(dir + "/docs.bin", off);
  write_bytes(dir + "/vocab.bin", voc);
  json::Value m = json::Value::object({{"format", "fp4qat-dataset"},
                                       {"version", 1},
                                       {"input_format", "chat"},
                                       {"num_documents", static_cast<int64_t>(docs.size())},
                                       {"num_tokens", n},
                                       {"num_loss_tokens", ones},
                                       {"min_document_tokens", mn},
                                       {"max_document_tokens", mx},
                                       {"token_bytes", 2},
                                       {"token_dtype", "uint16"},
                                       {"vocab_size", vocab},
                                       {"bos_id", nullptr},
                                       {"eos_id", vocab - 1},
                                       {"pad_id", nullptr}});
  m.set("tokenizer", json::Value::object({{"sha256", std::string(64, '0')}}));
  write_bytes(dir + "/dataset.json", m.dump(2));
}

// `count` documents of 3..14 tokens, ids in [0, vocab - 1), a "prompt" (mask 0) then a
// "response" (mask 1), from a fixed LCG.
inline std::vector<Doc> make_docs(int count, int64_t vocab) {
  std::vector<Doc> docs;
  uint64_t x = 12345;
  auto next = [&] {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    return x >> 33;
  };
  for (int d = 0; d < count; ++d) {
    Doc doc;
    const int len = 3 + static_cast<int>(next() % 12), prompt = 1 + static_cast<int>(next() % (len - 1));
    for (int i = 0; i < len; ++i) {
      doc.ids.push_back(static_cast<int64_t>(next() % static_cast<uint64_t>(vocab - 1)));
      doc.mask.push_back(i >= prompt ? 1 : 0);
    }
    docs.push_back(doc);
  }
  return docs;
}

}  // namespace fp4qat::test
