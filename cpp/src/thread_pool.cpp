#include "thread_pool.h"

#include <string>
#include <system_error>

namespace fusedopt {

ThreadPool::ThreadPool(int num_threads) {
  try {
    workers_.reserve(size_t(num_threads > 1 ? num_threads - 1 : 0));
    for (int i = 1; i < num_threads; ++i) workers_.emplace_back([this] { worker_loop(); });
  } catch (const std::exception& e) {
    // A std::thread that is destroyed while joinable ends the process: stop
    // the workers that did start before reporting.
    const size_t started = workers_.size();
    stop_and_join();
    throw std::runtime_error("could not start " + std::to_string(num_threads) + " threads (" +
                             std::to_string(started + 1) + " running): " + e.what());
  }
}

ThreadPool::~ThreadPool() { stop_and_join(); }

void ThreadPool::stop_and_join() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  for (auto& w : workers_)
    if (w.joinable()) w.join();
  workers_.clear();
}

void ThreadPool::drain() {
  for (;;) {
    const int64_t i = next_.fetch_add(1, std::memory_order_relaxed);
    if (i >= num_tasks_) return;
    try {
      (*task_)(i);
    } catch (...) {
      // An exception escaping a worker's thread function would end the
      // process: keep the first for `run` to rethrow, and skip the rest.
      std::lock_guard<std::mutex> lock(error_mutex_);
      if (!error_) error_ = std::current_exception();
      next_.store(num_tasks_, std::memory_order_relaxed);
    }
  }
}

void ThreadPool::worker_loop() {
  uint64_t seen = 0;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      ++checked_in_;
      ++active_workers_;
    }
    drain();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      --active_workers_;
    }
    done_.notify_all();
  }
}

void ThreadPool::run(int64_t num_tasks, const std::function<void(int64_t)>& task) {
  if (num_tasks <= 0) return;
  if (workers_.empty() || num_tasks == 1) {
    for (int64_t i = 0; i < num_tasks; ++i) task(i);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    task_ = &task;
    num_tasks_ = num_tasks;
    next_.store(0);
    error_ = nullptr;
    checked_in_ = 0;
    ++generation_;
  }
  wake_.notify_all();
  drain();
  // Wait until every worker has joined this region and left it again, so
  // that no worker can carry this region's `task` into the next one; then
  // every task that was started has finished.
  std::exception_ptr error;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] { return checked_in_ == int(workers_.size()) && active_workers_ == 0; });
    task_ = nullptr;
    std::lock_guard<std::mutex> error_lock(error_mutex_);
    std::swap(error, error_);
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace fusedopt
