// tests/io/test_http.cpp — io/http.h against an HTTP server the test starts on 127.0.0.1
// (tests/common/http_server.h): the request as sent (method, path, Content-Type, body byte for
// byte), a 500 answer returned and described with URL, status and the body's first bytes, a closed
// port and a server that never answers (the timeout) as errors naming the URL. In a build
// without libcurl, post() refuses with a message saying so.
#include <gtest/gtest.h>

#include <chrono>

#include "io/http.h"
#include "tests/common/http_server.h"
#include "tests/common/test_util.h"

using namespace fp4qat;
using fp4qat::test::error_of;
using fp4qat::test::HttpServer;

namespace {
bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }
}  // namespace

TEST(Http, WithoutLibcurlPostRefuses) {
  if (http::available()) GTEST_SKIP() << "this build has libcurl";
  const std::string e = error_of([] { http::post("http://127.0.0.1:1/x", "{}", "application/json", 1); });
  EXPECT_TRUE(has(e, "no libcurl")) << e;
}

TEST(Http, PostSendsTheBodyAndReturnsTheAnswer) {
  if (!http::available()) GTEST_SKIP() << "built without libcurl";
  HttpServer server(200, R"({"success": true})");
  // Large enough (over 1 MiB) that libcurl would otherwise send "Expect: 100-continue" and wait
  // for the server's go-ahead.
  const std::string body =
      R"({"model_path": "/tmp/a \"b\"/step-1/nvfp4", "pad": ")" + std::string(3u << 20, 'x') + "\"}";
  const auto t0 = std::chrono::steady_clock::now();
  const http::Response r = http::post(server.url("/update_weights_from_disk"), body, "application/json", 10);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(r.status, 200);
  EXPECT_TRUE(r.ok());
  EXPECT_EQ(r.body, R"({"success": true})");
  EXPECT_LT(secs, 0.9);  // no 100-continue wait (libcurl's is 1 s)
  const auto reqs = server.requests();
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(reqs[0].method, "POST");
  EXPECT_EQ(reqs[0].target, "/update_weights_from_disk");
  EXPECT_EQ(reqs[0].headers.at("content-type"), "application/json");
  EXPECT_EQ(reqs[0].headers.count("expect"), 0u);
  EXPECT_EQ(reqs[0].body, body);
}

TEST(Http, ErrorStatusIsReturnedAndDescribed) {
  if (!http::available()) GTEST_SKIP() << "built without libcurl";
  HttpServer server(500, "engine failed: \"out of memory\"\n" + std::string(300, 'y'));
  const std::string url = server.url("/update_weights_from_disk");
  const http::Response r = http::post(url, "{}", "application/json", 10);
  EXPECT_EQ(r.status, 500);
  EXPECT_FALSE(r.ok());
  const std::string d = http::describe_failure(url, r);
  EXPECT_TRUE(has(d, "POST " + url + ": HTTP 500")) << d;
  EXPECT_TRUE(has(d, "engine failed: \"out of memory\"\\x0ayyy")) << d;  // control bytes shown escaped
  EXPECT_TRUE(has(d, "(first 200 of 331 bytes)")) << d;
  EXPECT_FALSE(has(d, std::string(200, 'y'))) << d;  // only the first bytes
}

TEST(Http, ClosedPortIsAnErrorNamingTheUrl) {
  if (!http::available()) GTEST_SKIP() << "built without libcurl";
  const std::string url = "http://127.0.0.1:" + std::to_string(test::closed_port()) + "/update_weights_from_disk";
  const std::string e = error_of([&] { http::post(url, "{}", "application/json", 5); });
  EXPECT_TRUE(has(e, "POST " + url + ": ")) << e;
  EXPECT_TRUE(has(e, "onnect")) << e;  // "Failed to connect ... Couldn't connect to server"
}

TEST(Http, SilentServerHitsTheTimeout) {
  if (!http::available()) GTEST_SKIP() << "built without libcurl";
  HttpServer server(200, "", /*answer=*/false);
  const std::string url = server.url("/update_weights_from_disk");
  const auto t0 = std::chrono::steady_clock::now();
  const std::string e = error_of([&] { http::post(url, "{}", "application/json", 1); });
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_TRUE(has(e, "POST " + url + ": no complete answer within the timeout of 1 s")) << e;
  EXPECT_GE(secs, 0.9);
  EXPECT_LT(secs, 5);
  EXPECT_EQ(server.requests().size(), 1u);  // the request did arrive
}

TEST(Http, OnlyHttpAndHttps) {
  if (!http::available()) GTEST_SKIP() << "built without libcurl";
  const std::string e = error_of([] { http::post("file:///etc/passwd", "{}", "application/json", 1); });
  EXPECT_TRUE(has(e, "POST file:///etc/passwd: ")) << e;
}
