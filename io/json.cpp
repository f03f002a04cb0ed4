// io/json.cpp — see json.h.
#include "io/json.h"

#include <charconv>
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
  return v;
}

const char* Value::type_name() const {
  switch (type_) {
    case Type::Null: return "null";
    case Type::Bool: return "boolean";
    case Type::Int: return "integer";
    case Type::Double: return "number";
    case Type::String: return "string";
    case Type::Array: return "array";
    case Type::Object: return "object";
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
  return o_;
}

const Value* Value::find(std::string_view key) const {
  if (!is_object()) return nullptr;
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
  for (auto& kv : o_)
    if (kv.first == key) return kv.second = std::move(v);
  o_.emplace_back(key, std::move(v));
  return o_.back().second;
}

bool Value::erase(std::string_view key) {
  if (!is_object()) return false;
  for (auto it = o_.begin(); it != o_.end(); ++it)
    if (it->first == key) {
      o_.erase(it);
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
    case Type::Null: return true;
    case Type::Bool: return b_ == o.b_;
    case Type::String: return s_ == o.s_;
    case Type::Array: return a_ == o.a_;
    case Type::Object: {
      if (o_.size() != o.o_.size()) return false;
      for (const auto& kv : o_) {
        const Value* ov = o.find(kv.first);
        if (!ov || *ov != kv.second) return false;
      }
      return true;
    }
    default: return false;
  }
}

std::string quote(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 2);
  out.push_back('"');
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
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
    case Type::Null: out += "null"; break;
    case Type::Bool: out += b_ ? "true" : "false"; break;
    case Type::Int: out += std::to_string(i_); break;
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
    case Type::String: out += quote(s_); break;
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

// ---- parser ------------------------------------------------------------------------------------
namespace {

class Parser {
 public:
  Parser(std::string_view t, const std::string& src, const ParseOptions& o) : t_(t), src_(src), opt_(o) {}

  Value parse_document() {
    ws();
    Value v = value(0);
    ws();
    if (p_ != t_.size()) fail("unexpected trailing characters");
    return v;
  }

 private:
  [[noreturn]] void fail(const std::string& what) {
    FP4QAT_FAIL(src_, ": invalid JSON at byte ", p_, ": ", what);
  }
  void ws() {
    while (p_ < t_.size() && (t_[p_] == ' ' || t_[p_] == '\t' || t_[p_] == '\n' || t_[p_] == '\r')) ++p_;
  }
  char peek() { return p_ < t_.size() ? t_[p_] : '\0'; }
  void expect(char c) {
    if (p_ >= t_.size() || t_[p_] != c) fail(std::string("expected '") + c + "'");
    ++p_;
  }
  void literal(const char* word) {
    const size_t n = std::strlen(word);
    if (t_.substr(p_, n) != word) fail(std::string("expected '") + word + "'");
    p_ += n;
  }

  Value value(int depth) {
    if (depth > opt_.max_depth) fail("nesting deeper than " + std::to_string(opt_.max_depth));
    if (p_ >= t_.size()) fail("unexpected end of input");
    const char c = t_[p_];
    if (c == '{') return object(depth);
    if (c == '[') return array(depth);
    if (c == '"') return Value(string());
    if (c == 't') { literal("true"); return Value(true); }
    if (c == 'f') { literal("false"); return Value(false); }
    if (c == 'n') { literal("null"); return Value(); }
    if (c == '-' || (c >= '0' && c <= '9')) return number();
    fail(std::string("unexpected character '") + c + "'");
  }

  Value object(int depth) {
    expect('{');
    Value v = Value::object();
    ws();
    if (peek() == '}') { ++p_; return v; }
    for (;;) {
      ws();
      if (peek() != '"') fail("expected a string key");
      std::string key = string();
      if (v.find(key)) fail("duplicate key '" + key + "'");
      ws();
      expect(':');
      ws();
      v.as_object_mut().emplace_back(std::move(key), value(depth + 1));
      ws();
      if (peek() == ',') { ++p_; continue; }
      expect('}');
      return v;
    }
  }

  Value array(int depth) {
    expect('[');
    Value v = Value::array();
    ws();
    if (peek() == ']') { ++p_; return v; }
    for (;;) {
      ws();
      v.as_array_mut().push_back(value(depth + 1));
      ws();
      if (peek() == ',') { ++p_; continue; }
      expect(']');
      return v;
    }
  }

  unsigned hex4() {
    if (p_ + 4 > t_.size()) fail("truncated \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; ++i) {
      const char c = t_[p_++];
      v <<= 4;
      if (c >= '0' && c <= '9') v |= unsigned(c - '0');
      else if (c >= 'a' && c <= 'f') v |= unsigned(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') v |= unsigned(c - 'A' + 10);
      else fail("bad hex digit in \\u escape");
    }
    return v;
  }

  static void utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) out.push_back(char(cp));
    else if (cp < 0x800) { out.push_back(char(0xC0 | (cp >> 6))); out.push_back(char(0x80 | (cp & 0x3F))); }
    else if (cp < 0x10000) {
      out.push_back(char(0xE0 | (cp >> 12))); out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
      out.push_back(char(0x80 | (cp & 0x3F)));
    } else {
      out.push_back(char(0xF0 | (cp >> 18))); out.push_back(char(0x80 | ((cp >> 12) & 0x3F)));
      out.push_back(char(0x80 | ((cp >> 6) & 0x3F))); out.push_back(char(0x80 | (cp & 0x3F)));
    }
  }

  std::string string() {
    expect('"');
    std::string out;
    for (;;) {
      if (p_ >= t_.size()) fail("unterminated string");
      const unsigned char c = static_cast<unsigned char>(t_[p_++]);
      if (c == '"') return out;
      if (c < 0x20) fail("control character in string");
      if (c != '\\') { out.push_back(char(c)); continue; }
      if (p_ >= t_.size()) fail("unterminated escape");
      const char e = t_[p_++];
      switch (e) {
        case '"': out.push_back('"'); break;
        case '\\': out.push_back('\\'); break;
        case '/': out.push_back('/'); break;
        case 'b': out.push_back('\b'); break;
        case 'f': out.push_back('\f'); break;
        case 'n': out.push_back('\n'); break;
        case 'r': out.push_back('\r'); break;
        case 't': out.push_back('\t'); break;
        case 'u': {
          unsigned cp = hex4();
          if (cp >= 0xD800 && cp < 0xDC00) {
            if (t_.substr(p_, 2) != "\\u") fail("unpaired surrogate");
            p_ += 2;
            const unsigned lo = hex4();
            if (lo < 0xDC00 || lo >= 0xE000) fail("bad low surrogate");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp < 0xE000) {
            fail("unpaired surrogate");
          }
          utf8(out, cp);
          break;
        }
        default: fail(std::string("bad escape '\\") + e + "'");
      }
    }
  }

  Value number() {
    const size_t start = p_;
    if (peek() == '-') ++p_;
    if (peek() == '0') {
      ++p_;
    } else if (peek() >= '1' && peek() <= '9') {
      while (peek() >= '0' && peek() <= '9') ++p_;
    } else {
      fail("bad number");
    }
    bool integral = true;
    if (peek() == '.') {
      integral = false;
      ++p_;
      if (!(peek() >= '0' && peek() <= '9')) fail("bad number: digit expected after '.'");
      while (peek() >= '0' && peek() <= '9') ++p_;
    }
    if (peek() == 'e' || peek() == 'E') {
      integral = false;
      ++p_;
      if (peek() == '+' || peek() == '-') ++p_;
      if (!(peek() >= '0' && peek() <= '9')) fail("bad number: digit expected in exponent");
      while (peek() >= '0' && peek() <= '9') ++p_;
    }
    const char* b = t_.data() + start;
    const char* e = t_.data() + p_;
    if (integral) {
      int64_t v = 0;
      auto r = std::from_chars(b, e, v);
      if (r.ec == std::errc() && r.ptr == e) return Value(v);
      // out of int64 range: fall through to double
    }
    const std::string s(b, e);
    char* end = nullptr;
    const double d = std::strtod(s.c_str(), &end);
    if (end != s.c_str() + s.size()) fail("bad number");
    return Value(d);
  }

  std::string_view t_;
  const std::string& src_;
  const ParseOptions& opt_;
  size_t p_ = 0;
};

}  // namespace

Value parse(std::string_view text, const std::string& source, const ParseOptions& opt) {
  Parser p(text, source, opt);
  return p.parse_document();
}

}  // namespace fp4qat::json
