// Netstring reader and writer. See netstring.hpp.
#include "socketmap/netstring.hpp"

#include <fmt/format.h>

namespace tlspolicy {

NetstringReader::Status NetstringReader::next(std::string_view* out) {
  if (pos_ > 0 && pos_ == buf_.size()) {  // everything consumed: reuse the buffer
    buf_.clear();
    pos_ = 0;
  } else if (pos_ > 65536) {
    buf_.erase(0, pos_);
    pos_ = 0;
  }
  size_t len = 0, i = pos_;
  for (; i < buf_.size() && buf_[i] != ':'; ++i) {
    char c = buf_[i];
    if (c < '0' || c > '9') {
      error_ = fmt::format("malformed netstring: unexpected byte 0x{:02x} in length", static_cast<unsigned char>(c));
      return Status::error;
    }
    if (i > pos_ && buf_[pos_] == '0') {
      error_ = "malformed netstring: leading zero in length";
      return Status::error;
    }
    len = len * 10 + size_t(c - '0');
    if (len > max_len_) {
      error_ = fmt::format("request longer than {} bytes", max_len_);
      return Status::error;
    }
  }
  if (i == buf_.size()) return Status::need_more;
  if (i == pos_) {
    error_ = "malformed netstring: no length before ':'";
    return Status::error;
  }
  size_t start = i + 1;
  if (buf_.size() < start + len + 1) return Status::need_more;
  if (buf_[start + len] != ',') {
    error_ = "malformed netstring: missing ',' after the payload";
    return Status::error;
  }
  *out = std::string_view(buf_).substr(start, len);
  pos_ = start + len + 1;
  return Status::ok;
}

void append_netstring(std::string& out, std::string_view payload) {
  fmt::format_to(std::back_inserter(out), "{}:", payload.size());
  out.append(payload);
  out += ',';
}

}  // namespace tlspolicy
