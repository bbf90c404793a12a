// See stats.hpp.
#include "policy/stats.hpp"

namespace tlspolicy {

Stats& stats() {
  static Stats s;
  return s;
}

}  // namespace tlspolicy
