// A small persistent thread pool: the caller plus (n - 1) workers share a
// task counter; one `run` is one parallel region.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace fusedopt {

class ThreadPool {
 public:
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return int(workers_.size()) + 1; }
  // Calls task(i) for every i in [0, num_tasks); returns when all are done.
  void run(int64_t num_tasks, const std::function<void(int64_t)>& task);

 private:
  void worker_loop();
  void drain();

  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  const std::function<void(int64_t)>* task_ = nullptr;
  int64_t num_tasks_ = 0;
  std::atomic<int64_t> next_{0};
  std::atomic<int64_t> finished_{0};
  uint64_t generation_ = 0;
  int active_workers_ = 0;
  int checked_in_ = 0;
  bool stop_ = false;
};

}  // namespace fusedopt
