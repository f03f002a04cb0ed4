// io/sha256.h — SHA-256 (FIPS 180-4) of bytes and of files, hex-encoded: the identity of a
// tokenizer (sha256 of tokenizer.json) that prepared datasets record (docs/data-format.md).
#pragma once
#include <string>
#include <string_view>

namespace fp4qat::sha256 {

std::string hex(std::string_view bytes);        // 64 lowercase hex digits
std::string file_hex(const std::string& path);  // streamed; throws fp4qat::Error naming the file

}  // namespace fp4qat::sha256
