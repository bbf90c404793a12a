// The current policy snapshot, shared by every front end. The daemon's reload
// stores a freshly built snapshot; readers load a reference and keep it for
// the whole request or mail transaction, so a reload never changes the rules
// under a running lookup and old snapshots die with their last reader.
//
// A mutex, not std::atomic<std::shared_ptr>: GCC 12's implementation releases
// its internal lock with a relaxed store, which ThreadSanitizer reports as a
// data race (tests/abuse/t_tsan.sh). Readers take it once per milter
// transaction, never per lookup (the socketmap loop keeps its own reference),
// so it costs nothing measurable.
#pragma once
#include <memory>
#include <mutex>

#include "policy/snapshot.hpp"

namespace tlspolicy {

class PolicyHolder {
 public:
  std::shared_ptr<const Snapshot> load() const {
    std::lock_guard lock(mutex_);
    return current_;
  }
  void store(std::shared_ptr<const Snapshot> s) {
    {
      std::lock_guard lock(mutex_);
      current_.swap(s);
    }
    // The old snapshot (now in s) is released outside the lock.
  }

 private:
  mutable std::mutex mutex_;
  std::shared_ptr<const Snapshot> current_;
};

}  // namespace tlspolicy
