// tests/common/http_server.h — a tiny HTTP/1.1 server on 127.0.0.1 (an ephemeral port) that the
// tests start in-process: one thread with a POSIX socket accepts connections one at a time, reads
// each request (request line, headers, a Content-Length body), records it and answers with the
// configured status and body (Connection: close) — or never answers, holding the connection open
// until the server stops (to test timeouts). No network beyond the loopback.
#pragma once
#include <atomic>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace fp4qat::test {

class HttpServer {
 public:
  struct Request {
    std::string method, target, body;
    std::map<std::string, std::string> headers;  // names in lower case
  };
  // answer false: read requests but never answer.
  explicit HttpServer(int status = 200, std::string body = R"({"success": true, "message": "ok"})", bool answer = true);
  ~HttpServer();  // stops the thread and closes every connection
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  int port() const { return port_; }
  std::string url(const std::string& path) const;  // http://127.0.0.1:<port><path>
  std::vector<Request> requests() const;           // received so far, in order
  // Called on the server's thread with each request before it is answered.
  void on_request(std::function<void(const Request&)> f);

 private:
  void serve();
  void handle(int fd);
  int status_;
  std::string body_;
  bool answer_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  mutable std::mutex mu_;
  std::vector<Request> requests_;
  std::function<void(const Request&)> on_request_;
  std::vector<int> held_;  // connections left unanswered (answer false)
  std::thread thread_;
};

// A port on 127.0.0.1 where nothing listens (bound, then closed again).
int closed_port();

}  // namespace fp4qat::test
