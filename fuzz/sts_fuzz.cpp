// libFuzzer target: the MTA-STS text parsers (policy file, TXT records) and
// the Postfix answer on arbitrary bytes. A parsed policy must keep its
// promises: an mx for enforce/testing, max_age in range, and an answer that
// is one line Postfix can read.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "discovery/mta_sts_policy.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tlspolicy::sts;
  std::string in(reinterpret_cast<const char*>(data), size);
  auto r = parse_policy(in);
  if (!r.policy && r.error.empty()) __builtin_trap();  // refusals say why
  if (r.policy) {
    const Policy& p = *r.policy;
    if (p.mode != Mode::none && p.mx.empty()) __builtin_trap();
    if (p.max_age > max_max_age) __builtin_trap();
    AnswerOptions opt;
    opt.tlsrpt = true;
    opt.domain = "example.test";
    opt.ttl = 60;
    for (const std::string& a : {postfix_answer(p), postfix_answer(p, opt)}) {
      if (a.rfind("secure match=", 0) != 0) __builtin_trap();
      for (char c : a)
        if (c == '\n' || c == '\r' || c == '\0') __builtin_trap();  // one socketmap value
    }
    for (const auto& m : p.mx)
      if (!mx_matches(m, m.substr(0, 2) == "*." ? "x" + m.substr(1) : m)) __builtin_trap();
  }
  // The same bytes as TXT records, split at NUL.
  std::vector<std::string> recs;
  size_t start = 0;
  for (size_t i = 0; i <= in.size(); ++i)
    if (i == in.size() || in[i] == '\0') {
      recs.push_back(in.substr(start, i - start));
      start = i + 1;
    }
  auto t = parse_txt_records(recs);
  if (t.status == TxtRecord::Status::found && (t.id.empty() || t.id.size() > 32)) __builtin_trap();
  if (t.status == TxtRecord::Status::invalid && t.error.empty()) __builtin_trap();
  if (in.size() < 300) (void)mx_matches(in.substr(0, in.size() / 2), in.substr(in.size() / 2));
  return 0;
}
