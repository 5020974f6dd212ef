// A small persistent thread pool: the caller plus (n - 1) workers share a
// task counter; one `run` is one parallel region.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace fusedopt {

class ThreadPool {
 public:
  // Throws std::runtime_error (with no thread left running) when the system
  // cannot start the workers.
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return int(workers_.size()) + 1; }
  // Calls task(i) for every i in [0, num_tasks); returns when all are done.
  // The first exception a task throws (on any thread) is rethrown here, once
  // every thread has left the region; tasks not yet started are skipped.
  void run(int64_t num_tasks, const std::function<void(int64_t)>& task);

 private:
  void worker_loop();
  void drain();
  void stop_and_join();

  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  const std::function<void(int64_t)>* task_ = nullptr;
  int64_t num_tasks_ = 0;
  std::atomic<int64_t> next_{0};
  std::mutex error_mutex_;
  std::exception_ptr error_;
  uint64_t generation_ = 0;
  int active_workers_ = 0;
  int checked_in_ = 0;
  bool stop_ = false;
};

}  // namespace fusedopt
