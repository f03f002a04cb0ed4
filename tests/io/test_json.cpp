// tests/io/test_json.cpp — io/json.h: parse/dump round trips and strict rejection.
#include <gtest/gtest.h>

#include "kernels/common/check.h"
#include "io/json.h"

using fp4qat::json::parse;
using fp4qat::json::Value;

TEST(Json, ParsesAndDumpsRoundTrip) {
  const std::string text =
      R"({"a": 1, "b": [true, false, null], "c": {"d": "x\"y\\z\n\u00e9\ud83d\ude00"}, "e": -2.5e3, "f": 9007199254740993})";
  const Value v = parse(text, "test");
  EXPECT_EQ(v.at("a").as_int(), 1);
  EXPECT_TRUE(v.at("b").as_array()[0].as_bool());
  EXPECT_TRUE(v.at("b").as_array()[2].is_null());
  EXPECT_EQ(v.at("c").at("d").as_string(), "x\"y\\z\n\xc3\xa9\xf0\x9f\x98\x80");
  EXPECT_EQ(v.at("e").as_double(), -2500.0);
  EXPECT_EQ(v.at("f").as_int(), 9007199254740993LL);  // exact beyond 2^53
  EXPECT_EQ(parse(v.dump(), "re"), v);
  EXPECT_EQ(parse(v.dump(2), "re"), v);
  // Insertion order is kept.
  EXPECT_EQ(v.as_object()[0].first, "a");
  EXPECT_EQ(v.as_object()[3].first, "e");
}

TEST(Json, DoublesRoundTripExactly) {
  for (double d : {0.1, 1.0 / 3.0, 1e-300, 6.02214076e23, -0.0}) {
    const Value v(d);
    EXPECT_EQ(parse(v.dump(), "d").as_double(), d);
  }
}

TEST(Json, RejectsMalformedInput) {
  const char* bad[] = {
      "",        "{",       "{\"a\":}",   "[1,]", "{\"a\":1,}", "01",          "1.",    "--1",
      "\"abc",   "\"\\q\"", "{\"a\":1}x", "tru",  "{a:1}",      "\"\\ud800\"", "[1 2]", "{\"a\":1,\"a\":2}",
      "\"\x01\""};
  for (const char* b : bad) EXPECT_THROW(parse(b, "bad"), fp4qat::Error) << "input: " << b;
}

TEST(Json, BoundsNestingDepth) {
  std::string deep(1000, '[');
  deep += std::string(1000, ']');
  EXPECT_THROW(parse(deep, "deep"), fp4qat::Error);
  std::string ok(50, '[');
  ok += std::string(50, ']');
  EXPECT_NO_THROW(parse(ok, "ok"));
}

TEST(Json, TypedAccessNamesTheKey) {
  const Value v = parse(R"({"n": "x"})", "t");
  try {
    v.at("n").as_int("config.n");
    FAIL() << "expected a throw";
  } catch (const fp4qat::Error& e) {
    EXPECT_NE(std::string(e.what()).find("config.n"), std::string::npos);
  }
  EXPECT_THROW(v.at("missing", "config"), fp4qat::Error);
}

TEST(Json, DuplicateKeysRefusedInSmallAndLargeObjects) {
  EXPECT_THROW(parse(R"({"a": 1, "a": 2})", "dup"), fp4qat::Error);
  std::string big = "{";
  for (int i = 0; i < 100; ++i) big += "\"k" + std::to_string(i) + "\": " + std::to_string(i) + ",";
  EXPECT_NO_THROW(parse(big.substr(0, big.size() - 1) + "}", "big"));
  try {
    parse(big + "\"k57\": 0}", "big.json");  // past the size where keys are looked up by hash
    FAIL() << "expected a throw";
  } catch (const fp4qat::Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("big.json"), std::string::npos) << m;
    EXPECT_NE(m.find("duplicate key 'k57'"), std::string::npos) << m;
  }
}

TEST(Json, DepthLimitIsExact) {
  fp4qat::json::ParseOptions o;
  o.max_depth = 8;
  // Nine nested arrays: the innermost is a value at depth 8 (the outermost is at depth 0).
  EXPECT_NO_THROW(parse(std::string(9, '[') + std::string(9, ']'), "ok", o));
  EXPECT_THROW(parse(std::string(10, '[') + std::string(10, ']'), "deep", o), fp4qat::Error);
  EXPECT_NO_THROW(parse(std::string(8, '[') + "1" + std::string(8, ']'), "ok", o));
  EXPECT_THROW(parse(std::string(9, '[') + "1" + std::string(9, ']'), "deep", o), fp4qat::Error);
}

TEST(Json, SyntaxErrorsNameSourceAndByteAndInvalidUtf8IsRefused) {
  try {
    parse("{\"a\": 1,}", "cfg.json");
    FAIL() << "expected a throw";
  } catch (const fp4qat::Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("cfg.json: invalid JSON at byte"), std::string::npos) << m;
  }
  EXPECT_THROW(parse("\"\xff\xfe\"", "utf8"), fp4qat::Error);
  EXPECT_THROW(parse("{\"\xc3\": 1}", "utf8"), fp4qat::Error);  // truncated sequence in a key
  EXPECT_EQ(parse("\"\xc3\xa9\"", "utf8").as_string(), "\xc3\xa9");
}

TEST(Json, LargeObjectsKeepOrderAndLookupsThroughSetEraseAndCopies) {
  Value o = Value::object();
  for (int i = 0; i < 200; ++i) o.set("k" + std::to_string(i), i);
  o.set("k7", 700);  // replaced in place, position kept
  EXPECT_EQ(o.as_object()[7].first, "k7");
  EXPECT_EQ(o.at("k7").as_int(), 700);
  EXPECT_EQ(o.as_object().size(), 200u);
  Value copy = o;
  copy.set("new", 1);  // the copy's index changes, the original's does not
  EXPECT_EQ(o.find("new"), nullptr);
  EXPECT_EQ(copy.at("new").as_int(), 1);
  EXPECT_EQ(copy.at("k199").as_int(), 199);
  EXPECT_TRUE(o.erase("k0"));
  EXPECT_EQ(o.find("k0"), nullptr);
  EXPECT_EQ(o.at("k1").as_int(), 1);  // positions after the erased key moved
  EXPECT_EQ(o.at("k199").as_int(), 199);
  for (int i = 1; i < 200; ++i) EXPECT_EQ(o.at("k" + std::to_string(i)).as_int(), i == 7 ? 700 : i);
  o.as_object_mut()[0].first = "renamed";  // keys changed by hand: still found
  EXPECT_EQ(o.at("renamed").as_int(), 1);
  EXPECT_EQ(o.find("k1"), nullptr);
}

TEST(Json, WriterBytesAreFixed) {
  // The writer's exact output (safetensors headers and exported configs depend on it).
  const Value v = Value::object({{"b", 1},
                                 {"a", Value::array({1.5, -0.0, 1e300, 3.0, "x\n\x01"})},
                                 {"e", Value::object()},
                                 {"n", nullptr},
                                 {"t", true}});
  EXPECT_EQ(v.dump(), R"({"b":1,"a":[1.5,-0.0,1e+300,3.0,"x\n\u0001"],"e":{},"n":null,"t":true})");
  EXPECT_EQ(v.dump(2),
            "{\n  \"b\": 1,\n  \"a\": [\n    1.5,\n    -0.0,\n    1e+300,\n    3.0,\n    \"x\\n\\u0001\"\n  ],\n"
            "  \"e\": {},\n  \"n\": null,\n  \"t\": true\n}");
}
