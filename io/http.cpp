// io/http.cpp — see http.h.
#include "io/http.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string_view>

#include "kernels/common/check.h"

#ifdef FP4QAT_WITH_CURL
#include <curl/curl.h>
#endif

namespace fp4qat::http {

namespace {

constexpr size_t kMaxBody = 64u << 10;  // of an answer, kept; the rest is read and dropped

#ifdef FP4QAT_WITH_CURL
size_t on_data(char* p, size_t size, size_t n, void* user) {
  auto* out = static_cast<std::string*>(user);
  const size_t len = size * n;
  if (out->size() < kMaxBody) out->append(p, std::min(len, kMaxBody - out->size()));
  return len;
}

void global_init() {  // curl_global_init is not thread-safe: once, before any handle
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

template <typename T>
void set(CURL* h, CURLoption o, T v, const std::string& url, const char* what) {
  const CURLcode rc = curl_easy_setopt(h, o, v);
  FP4QAT_CHECK(rc == CURLE_OK, "POST ", url, ": libcurl refused option ", what, ": ", curl_easy_strerror(rc));
}
#endif

}  // namespace

bool available() {
#ifdef FP4QAT_WITH_CURL
  return true;
#else
  return false;
#endif
}

Response post(const std::string& url, const std::string& body, const std::string& content_type, double timeout_s) {
#ifndef FP4QAT_WITH_CURL
  (void)body, (void)content_type, (void)timeout_s;
  FP4QAT_FAIL("POST ", url, ": this build of fp4qat has no libcurl (install libcurl4-openssl-dev, e.g. with ",
              "scripts/setup, and reconfigure the build)");
#else
  FP4QAT_CHECK(timeout_s > 0 && std::isfinite(timeout_s), "POST ", url, ": the timeout must be > 0 s, got ", timeout_s);
  global_init();
  std::unique_ptr<CURL, void (*)(CURL*)> h(curl_easy_init(), curl_easy_cleanup);
  FP4QAT_CHECK(h != nullptr, "POST ", url, ": libcurl could not make a handle");
  std::unique_ptr<curl_slist, void (*)(curl_slist*)> headers(nullptr, curl_slist_free_all);
  // "Expect:" (empty): no 100-continue round trip before a larger body.
  for (const std::string& hd : {"Content-Type: " + content_type, std::string("Expect:")}) {
    curl_slist* l = curl_slist_append(headers.get(), hd.c_str());
    FP4QAT_CHECK(l != nullptr, "POST ", url, ": out of memory");
    headers.release();
    headers.reset(l);
  }
  std::string noproxy = "localhost,127.0.0.1,::1";  // CURLOPT_NOPROXY replaces no_proxy: keep the user's too
  for (const char* var : {"no_proxy", "NO_PROXY"}) {
    const char* v = std::getenv(var);
    if (v && *v) {
      noproxy += std::string(",") + v;
      break;
    }
  }
  Response r;
  char err[CURL_ERROR_SIZE] = {};
  const long ms = std::max(1L, static_cast<long>(std::llround(timeout_s * 1000)));
  CURL* c = h.get();
  set(c, CURLOPT_URL, url.c_str(), url, "URL");
#if LIBCURL_VERSION_NUM >= 0x075500
  set(c, CURLOPT_PROTOCOLS_STR, "http,https", url, "PROTOCOLS_STR");
#else
  set(c, CURLOPT_PROTOCOLS, static_cast<long>(CURLPROTO_HTTP | CURLPROTO_HTTPS), url, "PROTOCOLS");
#endif
  set(c, CURLOPT_POST, 1L, url, "POST");
  set(c, CURLOPT_POSTFIELDS, body.data(), url, "POSTFIELDS");
  set(c, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()), url, "POSTFIELDSIZE_LARGE");
  set(c, CURLOPT_HTTPHEADER, headers.get(), url, "HTTPHEADER");
  set(c, CURLOPT_WRITEFUNCTION, &on_data, url, "WRITEFUNCTION");
  set(c, CURLOPT_WRITEDATA, static_cast<void*>(&r.body), url, "WRITEDATA");
  set(c, CURLOPT_ERRORBUFFER, err, url, "ERRORBUFFER");
  set(c, CURLOPT_NOSIGNAL, 1L, url, "NOSIGNAL");  // called from a background thread: no SIGALRM
  set(c, CURLOPT_TIMEOUT_MS, ms, url, "TIMEOUT_MS");
  set(c, CURLOPT_CONNECTTIMEOUT_MS, ms, url, "CONNECTTIMEOUT_MS");
  set(c, CURLOPT_FOLLOWLOCATION, 0L, url, "FOLLOWLOCATION");
  set(c, CURLOPT_NOPROXY, noproxy.c_str(), url, "NOPROXY");
  set(c, CURLOPT_USERAGENT, "fp4qat", url, "USERAGENT");
  const auto t0 = std::chrono::steady_clock::now();
  const CURLcode rc = curl_easy_perform(c);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (rc != CURLE_OK) {
    const std::string why = err[0] ? err : curl_easy_strerror(rc);
    if (rc == CURLE_OPERATION_TIMEDOUT)
      FP4QAT_FAIL("POST ", url, ": no complete answer within the timeout of ", timeout_s, " s (", why, ")");
    FP4QAT_FAIL("POST ", url, ": ", why, " (libcurl error ", static_cast<int>(rc), ")");
  }
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
  return r;
#endif
}

std::string describe_failure(const std::string& url, const Response& r, size_t max_bytes) {
  std::string excerpt;
  const std::string_view b(r.body.data(), std::min(r.body.size(), max_bytes));
  for (const char ch : b) {
    const unsigned char u = static_cast<unsigned char>(ch);
    if (u >= 0x20 && u < 0x7f) {
      excerpt += ch;
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", u);
      excerpt += buf;
    }
  }
  char t[32];
  std::snprintf(t, sizeof t, "%.3g", r.seconds);
  return "POST " + url + ": HTTP " + std::to_string(r.status) + " after " + t + " s: " +
         (r.body.empty() ? std::string("(empty body)")
                         : "'" + excerpt + "'" +
                               (r.body.size() > max_bytes ? " (first " + std::to_string(max_bytes) + " of " +
                                                                std::to_string(r.body.size()) + " bytes)"
                                                          : ""));
}

}  // namespace fp4qat::http
