// Outbound cipher strength: "at least N bits" turned into what a Postfix
// policy can say (a cipher grade and exclusions), computed from OpenSSL's
// own cipher tables, and exclusions checked with OpenSSL's parser. The
// tables of the OpenSSL this runs with, which on the MTA host is the one
// Postfix links.
#pragma once
#include <string>
#include <string_view>

namespace tlspolicy {

struct CipherFloor {
  std::string attributes;  // " ciphers=high exclude=A:B" (leading space), or empty with error
  std::string warning;     // what Postfix cannot guarantee (TLS 1.3 suites), or empty
  std::string error;
};

// The attributes that make Postfix use only ciphers of at least min_bits:
// the most permissive of Postfix's grades (its default cipher lists) whose
// TLS 1.2-and-older ciphers all have that many bits, else "high" minus the
// weaker ones by name.
CipherFloor cipher_floor(int min_bits);

// Whether OpenSSL knows a cipher or alias of this name (an exclude= item).
bool known_cipher_name(std::string_view name);

}  // namespace tlspolicy
