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
  const char* bad[] = {"",          "{",          "{\"a\":}",    "[1,]",        "{\"a\":1,}",   "01",
                       "1.",        "--1",        "\"abc",       "\"\\q\"",     "{\"a\":1}x",   "tru",
                       "{a:1}",     "\"\\ud800\"", "[1 2]",      "{\"a\":1,\"a\":2}", "\"\x01\""};
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
