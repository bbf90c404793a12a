// libFuzzer target: SocketmapServer's own buffer handling (read, answer,
// backpressure, send, half-close, close) over a real socketpair, with the
// client's writes and reads split at sizes taken from the input and the loop
// run one round at a time (run_once), and the server's limits shrunk so a
// few KB reach every backpressure path. The oracle: the connection's
// buffers stay within Limits::max_buffered(), and the bytes read back are exactly the
// replies answer_socketmap gives for the requests written, in order, up to
// the first framing error's PERM, after which the server closes.
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "fuzz/policy_fixture.hpp"
#include "socketmap/netstring.hpp"
#include "socketmap/responder.hpp"
#include "socketmap/server.hpp"

namespace {
using tlspolicy::NetstringReader;
using tlspolicy::SocketmapServer;

// What the server must send for `in`: the reference, built from the same
// codec and responder without the server's buffering.
std::string expected(std::string_view in) {
  NetstringReader r(tlspolicy::kMaxRequest);
  r.append(in);
  std::string out;
  std::string_view req;
  NetstringReader::Status st;
  while ((st = r.next(&req)) == NetstringReader::Status::ok)
    tlspolicy::append_netstring(out, tlspolicy::answer_socketmap(tlspolicy::fuzz::snapshot(), req).payload);
  if (st == NetstringReader::Status::error) tlspolicy::append_netstring(out, "PERM " + r.error());
  return out;
}

// Reads up to `limit` bytes; returns false at EOF.
bool drain(int fd, std::string& got, size_t limit) {
  char buf[8192];
  while (limit > 0) {
    ssize_t n = ::read(fd, buf, std::min(limit, sizeof buf));
    if (n == 0) return false;
    if (n < 0) return errno != ECONNRESET;  // EAGAIN: nothing more for now
    got.append(buf, size_t(n));
    limit -= size_t(n);
  }
  return true;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static auto snap = tlspolicy::fuzz::snapshot_ptr();
  tlspolicy::ServerOptions opt;
  opt.log = [](int, const std::string&) {};
  SocketmapServer server(opt);
  server.set_policy(snap);
  SocketmapServer::Limits lim;
  lim.max_pending_output = 700;
  lim.read_per_round = 300;
  lim.answers_per_round = 5;
  server.set_limits(lim);
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0) abort();
  // A small send buffer on the server's side, so a few KB of replies reach
  // the backpressure paths.
  int small = 4096;
  setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
  setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
  server.adopt(sv[1]);

  // Each step: one control byte, then up to (ctl & 31) * 9 + 1 bytes written
  // (what the socket takes), one loop round, and a read of (ctl >> 5) * 700
  // bytes (0: the client does not read this step).
  std::string sent, got;
  size_t i = 0;
  bool open = true;
  for (int step = 0; step < 400 && i < size && open; ++step) {
    uint8_t ctl = data[i++];
    size_t want = std::min(size - i, size_t(ctl & 31) * 9 + 1);
    ssize_t w = ::send(sv[0], data + i, want, MSG_NOSIGNAL);
    if (w > 0) {
      sent.append(reinterpret_cast<const char*>(data) + i, size_t(w));
      i += size_t(w);
    }
    server.run_once(0);
    open = drain(sv[0], got, size_t(ctl >> 5) * 700);
    if (server.max_buffered_now() > lim.max_buffered()) __builtin_trap();
  }
  // The client is done: half-close and read everything; the server must
  // answer all complete requests and then close, within a bounded number of
  // rounds (a stall is a failure too).
  ::shutdown(sv[0], SHUT_WR);
  for (int round = 0; round < 2000 && open; ++round) {
    server.run_once(0);
    open = drain(sv[0], got, SIZE_MAX);
    if (server.max_buffered_now() > lim.max_buffered()) __builtin_trap();
  }
  if (open || server.connections() != 0) __builtin_trap();  // stalled: never closed
  if (got != expected(sent)) __builtin_trap();
  ::close(sv[0]);
  return 0;
}
