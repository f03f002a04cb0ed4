// io/http.h — an HTTP POST through libcurl, for pushing each export to a running serving engine
// (export.push_url: SGLang's /update_weights_from_disk). No shell and no command line: the URL and
// body go to libcurl as data. Built without libcurl (CMake found none: FP4QAT_WITH_CURL unset),
// available() is false and post() throws; the recipe check refuses export.push_url before that.
//
// Only http:// and https:// (no redirect is followed); the whole exchange (connect, send, answer)
// is bounded by the timeout. Proxies come from the usual environment variables (http_proxy,
// https_proxy, no_proxy), except that the loopback addresses (localhost, 127.0.0.1, ::1) are
// always reached directly.
#pragma once
#include <string>

namespace fp4qat::http {

// True when this build has libcurl (POST works).
bool available();

struct Response {
  long status = 0;   // the HTTP status code
  std::string body;  // the answer's body (its first 64 KiB)
  double seconds = 0;
  bool ok() const { return status >= 200 && status < 300; }
};

// POSTs `body` to `url` with the given Content-Type and returns the answer, whatever its status.
// Throws fp4qat::Error naming the URL when no answer came: a bad URL, connection refused, name
// not resolved, TLS failure, or no complete answer within timeout_s seconds (saying so).
Response post(const std::string& url, const std::string& body, const std::string& content_type, double timeout_s);

// "POST <url>: HTTP <status> after <t> s: <the body's first max_bytes bytes>" for an answer that
// is not 2xx (control characters and non-ASCII bytes shown as \xNN).
std::string describe_failure(const std::string& url, const Response& r, size_t max_bytes = 200);

}  // namespace fp4qat::http
