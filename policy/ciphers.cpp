// See ciphers.hpp.
#include "policy/ciphers.hpp"

#include <fmt/format.h>
#include <openssl/ssl.h>

#include <memory>
#include <vector>

namespace tlspolicy {

namespace {

// Postfix's defaults for tls_medium_cipherlist and tls_high_cipherlist
// (postconf -d), the grades an enforcing policy can name.
constexpr std::pair<const char*, const char*> kGrades[] = {
    {"medium", "aNULL:-aNULL:HIGH:MEDIUM:+RC4:@STRENGTH"},
    {"high", "aNULL:-aNULL:HIGH:@STRENGTH"},
};

struct Cipher {
  std::string name;
  int bits;
  bool tls13;
};

// The ciphers a cipher list selects; empty when OpenSSL selects none.
std::vector<Cipher> select(const char* list) {
  std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> ctx(SSL_CTX_new(TLS_method()), SSL_CTX_free);
  std::vector<Cipher> out;
  if (!ctx || SSL_CTX_set_cipher_list(ctx.get(), list) != 1) return out;
  // Include the ciphers this OpenSSL considers too weak for its default
  // security level: Postfix lowers it too when a grade asks for them.
  SSL_CTX_set_security_level(ctx.get(), 0);
  STACK_OF(SSL_CIPHER)* sk = SSL_CTX_get_ciphers(ctx.get());
  for (int i = 0; i < sk_SSL_CIPHER_num(sk); ++i) {
    const SSL_CIPHER* c = sk_SSL_CIPHER_value(sk, i);
    int alg_bits = 0;
    int bits = SSL_CIPHER_get_bits(c, &alg_bits);
    out.push_back({SSL_CIPHER_get_name(c), bits, std::string_view(SSL_CIPHER_get_version(c)) == "TLSv1.3"});
  }
  return out;
}

}  // namespace

CipherFloor cipher_floor(int min_bits) {
  CipherFloor f;
  if (min_bits < 1 || min_bits > 256) {
    f.error = fmt::format("min_cipher_bits = {} is out of range (1 to 256)", min_bits);
    return f;
  }
  std::vector<Cipher> high;
  for (auto [grade, list] : kGrades) {
    auto ciphers = select(list);
    bool all = !ciphers.empty();
    for (auto& c : ciphers) all &= c.tls13 || c.bits >= min_bits;
    if (all) {
      f.attributes = fmt::format(" ciphers={}", grade);
      break;
    }
    high = std::move(ciphers);
  }
  if (f.attributes.empty()) {
    // Weaker ciphers of "high" to exclude: by OpenSSL alias where every
    // cipher the alias names is weaker (AES128, CAMELLIA128 ...), the rest
    // by name. Short, and still exact for this OpenSSL.
    std::vector<std::string> weak;
    size_t left = 0;
    for (auto& c : high) {
      if (c.tls13) continue;
      if (c.bits >= min_bits)
        ++left;
      else
        weak.push_back(c.name);
    }
    std::string exclude;
    auto add = [&](std::string_view x) {  // (appends: GCC 12 -O3 has a false -Wrestrict on ":" + s)
      if (!exclude.empty()) exclude += ':';
      exclude += x;
    };
    for (const char* alias : {"AES128", "CAMELLIA128", "ARIA128", "SEED", "IDEA", "3DES", "DES", "RC4"}) {
      auto named = select(alias);
      bool all_weak = !named.empty();
      for (auto& c : named) all_weak &= c.tls13 || c.bits < min_bits;
      if (!all_weak) continue;
      size_t before = weak.size();
      std::erase_if(weak, [&](const std::string& w) {
        for (auto& c : named)
          if (c.name == w) return true;
        return false;
      });
      if (weak.size() < before) add(alias);
    }
    for (auto& w : weak) add(w);
    if (left == 0) {
      f.error = fmt::format("min_cipher_bits = {}: no cipher of this OpenSSL ({}) has that many bits", min_bits,
                            OpenSSL_version(OPENSSL_VERSION));
      return f;
    }
    f.attributes = fmt::format(" ciphers=high exclude={}", exclude);
  }
  // TLS 1.3 suites are not chosen by the cipher list Postfix sets.
  int weakest13 = 0;
  std::string name13;
  for (auto& c : select("DEFAULT"))
    if (c.tls13 && (weakest13 == 0 || c.bits < weakest13)) weakest13 = c.bits, name13 = c.name;
  if (weakest13 > 0 && weakest13 < min_bits)
    f.warning = fmt::format("min_cipher_bits = {}: TLS 1.3 cipher suites are not governed by Postfix's cipher "
                            "settings, and a TLS 1.3 server may choose {} ({} bits); add protocols=<=TLSv1.2 to "
                            "this level to refuse TLS 1.3 for these destinations, or accept {} bits over TLS 1.3",
                            min_bits, name13, weakest13, weakest13);
  return f;
}

bool known_cipher_name(std::string_view name) {
  // One name, no list operators (":", a leading "!", "+", "-" or "@").
  if (name.empty() || name.find_first_of(": ") != std::string_view::npos || std::string_view("!+-@").find(name[0]) != std::string_view::npos)
    return false;
  return !select(std::string(name).c_str()).empty();
}

}  // namespace tlspolicy
