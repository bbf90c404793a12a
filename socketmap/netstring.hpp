// Netstring framing for the socketmap protocol ("14:tls-policy a.b,").
// The reader is incremental: feed it whatever arrived, take out complete
// requests; anything malformed or over the size limit is an error that
// ends that connection only.
#pragma once
#include <cstddef>
#include <string>
#include <string_view>

namespace tlspolicy {

class NetstringReader {
 public:
  enum class Status { need_more, ok, error };
  explicit NetstringReader(size_t max_len) : max_len_(max_len) {}

  void append(std::string_view data) { buf_.append(data); }
  // Takes the next complete netstring; `out` stays valid until the next call.
  Status next(std::string_view* out);
  const std::string& error() const { return error_; }
  size_t buffered() const { return buf_.size() - pos_; }

 private:
  std::string buf_;
  size_t pos_ = 0;
  size_t max_len_;
  std::string error_;
};

// Appends "<len>:<payload>," to out.
void append_netstring(std::string& out, std::string_view payload);

}  // namespace tlspolicy
