// io/json.cpp — see json.h.
#include "io/json.h"

#include <nlohmann/json.hpp>

#include <charconv>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "kernels/common/check.h"

namespace fp4qat::json {

Value Value::array(Array a) {
  Value v;
  v.type_ = Type::Array;
  v.a_ = std::move(a);
  return v;
}

Value Value::object(Object o) {
  Value v;
  v.type_ = Type::Object;
  v.o_ = std::move(o);
  v.reindex();
  return v;
}

void Value::reindex() {
  index_.reset();
  if (o_.size() < kIndexFrom) return;
  auto idx = std::make_shared<std::unordered_map<std::string, size_t>>();
  idx->reserve(o_.size() * 2);
  for (size_t i = 0; i < o_.size(); ++i) idx->emplace(o_[i].first, i);  // the first of equal keys wins
  index_ = std::move(idx);
}

const char* Value::type_name() const {
  switch (type_) {
    case Type::Null:
      return "null";
    case Type::Bool:
      return "boolean";
    case Type::Int:
      return "integer";
    case Type::Double:
      return "number";
    case Type::String:
      return "string";
    case Type::Array:
      return "array";
    case Type::Object:
      return "object";
  }
  return "?";
}

bool Value::as_bool(const std::string& what) const {
  FP4QAT_CHECK(is_bool(), what, ": expected a boolean, got ", type_name());
  return b_;
}
int64_t Value::as_int(const std::string& what) const {
  FP4QAT_CHECK(is_int(), what, ": expected an integer, got ", type_name());
  return i_;
}
double Value::as_double(const std::string& what) const {
  FP4QAT_CHECK(is_number(), what, ": expected a number, got ", type_name());
  return type_ == Type::Int ? static_cast<double>(i_) : d_;
}
const std::string& Value::as_string(const std::string& what) const {
  FP4QAT_CHECK(is_string(), what, ": expected a string, got ", type_name());
  return s_;
}
const Value::Array& Value::as_array(const std::string& what) const {
  FP4QAT_CHECK(is_array(), what, ": expected an array, got ", type_name());
  return a_;
}
const Value::Object& Value::as_object(const std::string& what) const {
  FP4QAT_CHECK(is_object(), what, ": expected an object, got ", type_name());
  return o_;
}
Value::Array& Value::as_array_mut() {
  FP4QAT_CHECK(is_array(), "expected an array, got ", type_name());
  return a_;
}
Value::Object& Value::as_object_mut() {
  FP4QAT_CHECK(is_object(), "expected an object, got ", type_name());
  index_.reset();  // the caller may change keys: look them up linearly from now on
  return o_;
}

const Value* Value::find(std::string_view key) const {
  if (!is_object()) return nullptr;
  if (index_) {
    const auto it = index_->find(std::string(key));
    return it == index_->end() ? nullptr : &o_[it->second].second;
  }
  for (const auto& kv : o_)
    if (kv.first == key) return &kv.second;
  return nullptr;
}

const Value& Value::at(std::string_view key, const std::string& what) const {
  FP4QAT_CHECK(is_object(), what, ": expected an object, got ", type_name());
  const Value* v = find(key);
  FP4QAT_CHECK(v != nullptr, what, ": missing key '", std::string(key), "'");
  return *v;
}

Value& Value::set(const std::string& key, Value v) {
  if (is_null()) type_ = Type::Object;
  FP4QAT_CHECK(is_object(), "json set('", key, "'): not an object");
  if (index_) {
    if (const auto it = index_->find(key); it != index_->end()) return o_[it->second].second = std::move(v);
    if (index_.use_count() > 1) index_ = std::make_shared<std::unordered_map<std::string, size_t>>(*index_);
    index_->emplace(key, o_.size());
    o_.emplace_back(key, std::move(v));
    return o_.back().second;
  }
  for (auto& kv : o_)
    if (kv.first == key) return kv.second = std::move(v);
  o_.emplace_back(key, std::move(v));
  if (o_.size() >= kIndexFrom) reindex();
  return o_.back().second;
}

bool Value::erase(std::string_view key) {
  if (!is_object()) return false;
  for (auto it = o_.begin(); it != o_.end(); ++it)
    if (it->first == key) {
      o_.erase(it);
      reindex();  // positions after it moved
      return true;
    }
  return false;
}

void Value::push_back(Value v) {
  if (is_null()) type_ = Type::Array;
  FP4QAT_CHECK(is_array(), "json push_back: not an array");
  a_.push_back(std::move(v));
}

bool Value::operator==(const Value& o) const {
  if (is_number() && o.is_number()) {
    if (type_ == Type::Int && o.type_ == Type::Int) return i_ == o.i_;
    return as_double() == o.as_double();
  }
  if (type_ != o.type_) return false;
  switch (type_) {
    case Type::Null:
      return true;
    case Type::Bool:
      return b_ == o.b_;
    case Type::String:
      return s_ == o.s_;
    case Type::Array:
      return a_ == o.a_;
    case Type::Object: {
      if (o_.size() != o.o_.size()) return false;
      for (const auto& kv : o_) {
        const Value* ov = o.find(kv.first);
        if (!ov || *ov != kv.second) return false;
      }
      return true;
    }
    default:
      return false;
  }
}

std::string quote(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 2);
  out.push_back('"');
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
  }
  out.push_back('"');
  return out;
}

namespace {
void newline(std::string& out, int indent, int level) {
  if (indent < 0) return;
  out.push_back('\n');
  out.append(static_cast<size_t>(indent * level), ' ');
}
}  // namespace

void Value::dump_to(std::string& out, int indent, int level) const {
  switch (type_) {
    case Type::Null:
      out += "null";
      break;
    case Type::Bool:
      out += b_ ? "true" : "false";
      break;
    case Type::Int:
      out += std::to_string(i_);
      break;
    case Type::Double: {
      if (!std::isfinite(d_)) {
        out += "null";  // JSON has no NaN/Inf
        break;
      }
      char buf[64];
      auto r = std::to_chars(buf, buf + sizeof buf, d_);  // shortest round-trip form
      std::string s(buf, r.ptr);
      if (s.find_first_of(".eE") == std::string::npos) s += ".0";
      out += s;
      break;
    }
    case Type::String:
      out += quote(s_);
      break;
    case Type::Array: {
      out.push_back('[');
      for (size_t i = 0; i < a_.size(); ++i) {
        if (i) out.push_back(',');
        newline(out, indent, level + 1);
        a_[i].dump_to(out, indent, level + 1);
      }
      if (!a_.empty()) newline(out, indent, level);
      out.push_back(']');
      break;
    }
    case Type::Object: {
      out.push_back('{');
      for (size_t i = 0; i < o_.size(); ++i) {
        if (i) out.push_back(',');
        newline(out, indent, level + 1);
        out += quote(o_[i].first);
        out += indent < 0 ? ":" : ": ";
        o_[i].second.dump_to(out, indent, level + 1);
      }
      if (!o_.empty()) newline(out, indent, level);
      out.push_back('}');
      break;
    }
  }
}

std::string Value::dump(int indent) const {
  std::string out;
  dump_to(out, indent, 0);
  return out;
}

// ---- parser: nlohmann-json's SAX parser building Values -------------------------------------
namespace {

// Builds a Value from nlohmann's SAX events, adding what nlohmann does not check: duplicate keys
// (refused) and the nesting depth (bounded by ParseOptions::max_depth). nlohmann itself refuses
// malformed JSON (RFC 8259: no leading zeros, no trailing commas, escapes, surrogates, control
// characters, invalid UTF-8, trailing characters) and reports the byte offset.
class Builder {
 public:
  explicit Builder(const ParseOptions& o) : opt_(o) {}
  Value root;
  std::string error;  // set when the builder itself refused the input

  bool null() { return put(Value()); }
  bool boolean(bool b) { return put(Value(b)); }
  bool number_integer(std::int64_t v) { return put(Value(static_cast<int64_t>(v))); }
  bool number_unsigned(std::uint64_t v) {
    if (v <= static_cast<std::uint64_t>(INT64_MAX)) return put(Value(static_cast<int64_t>(v)));
    return put(Value(static_cast<double>(v)));  // beyond int64: a double, as JSON numbers are
  }
  bool number_float(double d, const std::string&) { return put(Value(d)); }
  bool string(std::string& s) { return put(Value(std::move(s))); }
  bool binary(std::vector<std::uint8_t>&) { return refuse("binary values are not JSON"); }
  bool start_object(std::size_t) { return open(Value::object()); }
  bool start_array(std::size_t) { return open(Value::array()); }
  bool end_object() { return close(); }
  bool end_array() { return close(); }
  bool key(std::string& k) {
    if (stack_.back()->find(k)) return refuse("duplicate key '" + k + "'");
    key_ = std::move(k);
    return true;
  }
  bool parse_error(std::size_t pos, const std::string&, const nlohmann::detail::exception& ex) {
    // "[json.exception.parse_error.101] parse error at line 1, column 3: syntax error ..." -> after "] "
    std::string what = ex.what();
    if (const size_t k = what.find("] "); k != std::string::npos) what = what.substr(k + 2);
    syntax_at = pos;
    return refuse(what);
  }
  std::size_t syntax_at = std::string::npos;  // byte offset of a syntax error nlohmann found

 private:
  bool refuse(std::string why) {
    error = std::move(why);
    return false;
  }
  // Where the next value goes: the root, the open array, or the open object under key_.
  Value* slot(Value v) {
    if (stack_.empty()) {
      root = std::move(v);
      return &root;
    }
    Value& parent = *stack_.back();
    if (parent.is_array()) {
      parent.as_array_mut().push_back(std::move(v));
      return &parent.as_array_mut().back();
    }
    return &parent.set(key_, std::move(v));
  }
  bool put(Value v) {
    if (static_cast<int>(stack_.size()) > opt_.max_depth)
      return refuse("nesting deeper than " + std::to_string(opt_.max_depth));
    slot(std::move(v));
    return true;
  }
  bool open(Value v) {
    if (static_cast<int>(stack_.size()) > opt_.max_depth)
      return refuse("nesting deeper than " + std::to_string(opt_.max_depth));
    stack_.push_back(slot(std::move(v)));
    return true;
  }
  bool close() {
    stack_.pop_back();
    return true;
  }
  const ParseOptions& opt_;
  std::vector<Value*> stack_;  // the open arrays and objects, innermost last
  std::string key_;
};

}  // namespace

Value parse(std::string_view text, const std::string& source, const ParseOptions& opt) {
  Builder b(opt);
  const bool ok = nlohmann::json::sax_parse(text.begin(), text.end(), &b, nlohmann::json::input_format_t::json,
                                            /*strict=*/true);  // strict: nothing may follow the value
  if (ok) return std::move(b.root);
  if (b.syntax_at != std::string::npos) FP4QAT_FAIL(source, ": invalid JSON at byte ", b.syntax_at, ": ", b.error);
  FP4QAT_FAIL(source, ": invalid JSON: ", b.error.empty() ? std::string("rejected") : b.error);
}

}  // namespace fp4qat::json
