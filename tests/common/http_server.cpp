// tests/common/http_server.cpp — see http_server.h.
#include "tests/common/http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>

#include "kernels/common/check.h"

namespace fp4qat::test {

namespace {

// A socket bound to 127.0.0.1 on an ephemeral port; returns the fd and sets `port`.
int bind_loopback(int& port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  FP4QAT_CHECK(fd >= 0, "socket: ", std::strerror(errno));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    const int err = errno;
    ::close(fd);
    FP4QAT_FAIL("bind 127.0.0.1:0: ", std::strerror(err));
  }
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  port = ntohs(a.sin_port);
  return fd;
}

const char* reason(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 400:
      return "Bad Request";
    case 404:
      return "Not Found";
    case 500:
      return "Internal Server Error";
    default:
      return "Status";
  }
}

}  // namespace

HttpServer::HttpServer(int status, std::string body, bool answer)
    : status_(status), body_(std::move(body)), answer_(answer) {
  listen_fd_ = bind_loopback(port_);
  FP4QAT_CHECK(::listen(listen_fd_, 16) == 0, "listen: ", std::strerror(errno));
  thread_ = std::thread([this] { serve(); });
}

HttpServer::~HttpServer() {
  stop_ = true;
  thread_.join();
  for (int fd : held_) ::close(fd);
  ::close(listen_fd_);
}

std::string HttpServer::url(const std::string& path) const {
  return "http://127.0.0.1:" + std::to_string(port_) + path;
}

std::vector<HttpServer::Request> HttpServer::requests() const {
  std::lock_guard<std::mutex> l(mu_);
  return requests_;
}

void HttpServer::on_request(std::function<void(const Request&)> f) {
  std::lock_guard<std::mutex> l(mu_);
  on_request_ = std::move(f);
}

void HttpServer::serve() {
  while (!stop_) {
    pollfd p{listen_fd_, POLLIN, 0};
    if (::poll(&p, 1, 20) <= 0) continue;
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd >= 0) handle(fd);
  }
}

// Reads one request from `fd` (polling, so that stop_ ends it) and answers it, or holds `fd` open.
void HttpServer::handle(int fd) {
  std::string in;
  size_t head_end = std::string::npos, need = 0;
  Request req;
  while (!stop_) {
    if (head_end != std::string::npos && in.size() >= head_end + 4 + need) break;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 20) <= 0) continue;
    char buf[4096];
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;  // the client went away
    in.append(buf, static_cast<size_t>(n));
    if (head_end == std::string::npos && (head_end = in.find("\r\n\r\n")) != std::string::npos) {
      // The request line and the headers.
      size_t pos = in.find("\r\n");
      const std::string line = in.substr(0, pos);
      const size_t sp1 = line.find(' '), sp2 = line.find(' ', sp1 + 1);
      req.method = line.substr(0, sp1);
      req.target = line.substr(sp1 + 1, sp2 - sp1 - 1);
      while (pos < head_end) {
        const size_t next = in.find("\r\n", pos + 2);
        const std::string h = in.substr(pos + 2, next - pos - 2);
        const size_t colon = h.find(':');
        if (colon != std::string::npos) {
          std::string name = h.substr(0, colon), value = h.substr(colon + 1);
          std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
          value.erase(0, value.find_first_not_of(' '));
          req.headers[name] = value;
        }
        pos = next;
      }
      if (req.headers.count("content-length")) need = std::stoul(req.headers["content-length"]);
    }
  }
  if (head_end != std::string::npos) {
    req.body = in.substr(head_end + 4, need);
    std::function<void(const Request&)> f;
    {
      std::lock_guard<std::mutex> l(mu_);
      requests_.push_back(req);
      f = on_request_;
    }
    if (f) f(req);
  }
  if (!answer_) {
    held_.push_back(fd);  // closed when the server stops
    return;
  }
  const std::string out = "HTTP/1.1 " + std::to_string(status_) + " " + reason(status_) +
                          "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body_.size()) +
                          "\r\nConnection: close\r\n\r\n" + body_;
  for (size_t off = 0; off < out.size();) {
    const ssize_t n = ::send(fd, out.data() + off, out.size() - off, MSG_NOSIGNAL);
    if (n <= 0) break;
    off += static_cast<size_t>(n);
  }
  ::close(fd);
}

int closed_port() {
  int port = 0;
  ::close(bind_loopback(port));
  return port;
}

}  // namespace fp4qat::test
