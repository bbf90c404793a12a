// The current policy snapshot, shared by every front end. The daemon's reload
// stores a freshly built snapshot; readers load a reference and keep it for
// the whole request or mail transaction, so a reload never changes the rules
// under a running lookup and old snapshots die with their last reader.
#pragma once
#include <atomic>
#include <memory>

#include "policy/snapshot.hpp"

namespace tlspolicy {

class PolicyHolder {
 public:
  std::shared_ptr<const Snapshot> load() const { return current_.load(std::memory_order_acquire); }
  void store(std::shared_ptr<const Snapshot> s) { current_.store(std::move(s), std::memory_order_release); }

 private:
  std::atomic<std::shared_ptr<const Snapshot>> current_;
};

}  // namespace tlspolicy
