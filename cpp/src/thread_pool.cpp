#include "thread_pool.h"

namespace fusedopt {

ThreadPool::ThreadPool(int num_threads) {
  for (int i = 1; i < num_threads; ++i) workers_.emplace_back([this] { worker_loop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  for (auto& w : workers_) w.join();
}

void ThreadPool::drain() {
  for (;;) {
    const int64_t i = next_.fetch_add(1, std::memory_order_relaxed);
    if (i >= num_tasks_) return;
    (*task_)(i);
    finished_.fetch_add(1, std::memory_order_acq_rel);
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
    finished_.store(0);
    checked_in_ = 0;
    ++generation_;
  }
  wake_.notify_all();
  drain();
  // Wait until every worker has joined this region and left it again, so
  // that no worker can carry this region's `task` into the next one.
  std::unique_lock<std::mutex> lock(mutex_);
  done_.wait(lock, [&] {
    return checked_in_ == int(workers_.size()) && active_workers_ == 0 &&
           finished_.load() == num_tasks_;
  });
  task_ = nullptr;
}

}  // namespace fusedopt
