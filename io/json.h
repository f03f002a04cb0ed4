// io/json.h — a strict JSON value, parser and writer (RFC 8259), for safetensors headers,
// index.json, config.json, hf_quant_config.json and JSONL metrics. Parsing goes through
// nlohmann-json's SAX parser (syntax, escapes, surrogates, UTF-8, trailing characters), which this
// file completes with what it does not check: duplicate keys are refused and the nesting depth is
// bounded; errors throw fp4qat::Error naming the source (and the byte offset of a syntax error).
// Objects keep insertion order (safetensors headers and exported configs are written in the order
// their writers chose, byte for byte as before) and look keys up through a hash index once they
// hold more than a few keys, so an 18,432-key weight_map parses and is rebuilt in milliseconds.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <unordered_map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace fp4qat::json {

class Value {
 public:
  enum class Type { Null, Bool, Int, Double, String, Array, Object };
  using Array = std::vector<Value>;
  using Object = std::vector<std::pair<std::string, Value>>;

  Value() = default;  // null
  Value(std::nullptr_t) {}
  Value(bool b) : type_(Type::Bool), b_(b) {}
  Value(int v) : type_(Type::Int), i_(v) {}
  Value(int64_t v) : type_(Type::Int), i_(v) {}
  Value(uint64_t v) : type_(Type::Int), i_(static_cast<int64_t>(v)) {}
  Value(double v) : type_(Type::Double), d_(v) {}
  Value(const char* s) : type_(Type::String), s_(s) {}
  Value(std::string s) : type_(Type::String), s_(std::move(s)) {}
  static Value array(Array a = {});
  static Value object(Object o = {});

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::Null; }
  bool is_bool() const { return type_ == Type::Bool; }
  bool is_int() const { return type_ == Type::Int; }
  bool is_number() const { return type_ == Type::Int || type_ == Type::Double; }
  bool is_string() const { return type_ == Type::String; }
  bool is_array() const { return type_ == Type::Array; }
  bool is_object() const { return type_ == Type::Object; }
  const char* type_name() const;

  // Typed access: throw fp4qat::Error naming `what` when the type differs.
  bool as_bool(const std::string& what = "value") const;
  int64_t as_int(const std::string& what = "value") const;
  double as_double(const std::string& what = "value") const;  // Int or Double
  const std::string& as_string(const std::string& what = "value") const;
  const Array& as_array(const std::string& what = "value") const;
  const Object& as_object(const std::string& what = "value") const;
  Array& as_array_mut();
  Object& as_object_mut();

  // Object helpers. find() returns nullptr when absent (or when not an object).
  const Value* find(std::string_view key) const;
  const Value& at(std::string_view key, const std::string& what = "object") const;  // throws if absent
  Value& set(const std::string& key, Value v);  // insert or replace, keeps first position
  bool erase(std::string_view key);
  void push_back(Value v);

  bool operator==(const Value& o) const;
  bool operator!=(const Value& o) const { return !(*this == o); }

  // indent < 0: compact one line; otherwise pretty-printed with that many spaces.
  std::string dump(int indent = -1) const;

 private:
  void dump_to(std::string& out, int indent, int level) const;
  void reindex();  // objects of kIndexFrom keys or more get index_; others look keys up linearly
  static constexpr size_t kIndexFrom = 16;
  Type type_ = Type::Null;
  bool b_ = false;
  int64_t i_ = 0;
  double d_ = 0.0;
  std::string s_;
  Array a_;  // std::vector of an incomplete type is allowed since C++17
  Object o_;
  // Object key -> position in o_, shared between copies until one of them changes (copy on write).
  std::shared_ptr<std::unordered_map<std::string, size_t>> index_;
};

struct ParseOptions {
  int max_depth = 64;
};

// Parses exactly one JSON value (surrounding whitespace allowed). `source` names the input in
// error messages (a file name, "safetensors header of X", ...).
Value parse(std::string_view text, const std::string& source, const ParseOptions& opt = {});

// JSON string literal for s (with quotes and escapes).
std::string quote(std::string_view s);

}  // namespace fp4qat::json
