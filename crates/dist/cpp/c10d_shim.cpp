// forja's bridge to libtorch's c10d: a TCPStore rendezvous and a process
// group (Gloo on CPU) over the store, driven from Rust through a C ABI.
//
// Soundness rule: only the c10d API crosses this file. The Gloo headers
// (Debian's libgloo-dev; the torch wheel ships none) are needed to parse
// ProcessGroupGloo.hpp, but no gloo object is created, copied or touched
// here: the device is an opaque std::shared_ptr made by libtorch itself, and
// every collective is a virtual call into libtorch's own compiled Gloo. The
// build script checks the compiled object defines no gloo symbol.
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/utils/lambda_post_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <mutex>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

struct Store {
  c10::intrusive_ptr<c10d::Store> store;
};

struct Group {
  c10::intrusive_ptr<c10d::Backend> backend;
};

char* dup(const std::string& s) {
  char* p = static_cast<char*>(std::malloc(s.size() + 1));
  if (p != nullptr) {
    std::memcpy(p, s.c_str(), s.size() + 1);
  }
  return p;
}

// Runs `f`, turning any C++ exception into an owned message (nullptr: ok).
template <typename F>
char* guarded(F&& f) {
  try {
    f();
    return nullptr;
  } catch (const std::exception& e) {
    return dup(e.what());
  } catch (...) {
    return dup("unknown C++ exception in c10d");
  }
}

c10::intrusive_ptr<c10d::Store>& store_of(void* s) { return static_cast<Store*>(s)->store; }
c10::intrusive_ptr<c10d::Backend>& backend_of(void* g) { return static_cast<Group*>(g)->backend; }

// Sums gradients across ranks while the backward pass still runs, as DDP's
// reducer does: a post-hook on each parameter's gradient accumulator marks it
// ready; buckets (groups of parameters in the order their gradients became
// ready in the first backward pass) are summed asynchronously, in bucket
// order on every rank, as soon as all of theirs are ready.
struct Overlap {
  c10::intrusive_ptr<c10d::Backend> backend;
  std::vector<at::Tensor> params;
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators;  // kept alive: they hold the hooks
  int64_t bucket_numel = 0;
  std::mutex mu;
  // Observation (first backward): the order gradients became ready.
  std::vector<int64_t> order;
  std::vector<bool> seen;
  // Buckets, once built.
  std::vector<std::vector<int64_t>> buckets;
  std::vector<int64_t> bucket_of;
  std::vector<int64_t> pending;
  std::vector<at::Tensor> buffers;
  std::vector<c10::intrusive_ptr<c10d::Work>> works;
  size_t next = 0;
  bool armed = false;

  void ready(int64_t i) {
    std::lock_guard<std::mutex> lock(mu);
    if (buckets.empty()) {
      if (!seen[i]) {
        seen[i] = true;
        order.push_back(i);
      }
      return;
    }
    if (!armed) {
      return;
    }
    pending[bucket_of[i]] -= 1;
    while (next < buckets.size() && pending[next] == 0) {
      launch(next++);
    }
  }

  void launch(size_t b) {
    std::vector<at::Tensor> flat;
    for (auto i : buckets[b]) {
      const auto& g = params[i].grad();
      flat.push_back(g.defined() ? g.reshape({-1}) : at::zeros({params[i].numel()}, params[i].options()));
    }
    buffers[b] = at::cat(flat);
    std::vector<at::Tensor> v{buffers[b]};
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    works[b] = backend->allreduce(v, opts);
  }

  void build() {
    buckets.clear();
    std::vector<int64_t> all = order;
    for (size_t i = 0; i < params.size(); ++i) {
      if (!seen[i]) {
        all.push_back(static_cast<int64_t>(i));  // never ready in the first pass: last
      }
    }
    bucket_of.assign(params.size(), 0);
    int64_t size = 0;
    for (auto i : all) {
      if (buckets.empty() || size >= bucket_numel) {
        buckets.emplace_back();
        size = 0;
      }
      buckets.back().push_back(i);
      bucket_of[i] = static_cast<int64_t>(buckets.size() - 1);
      size += params[i].numel();
    }
    buffers.assign(buckets.size(), at::Tensor());
    works.assign(buckets.size(), c10::intrusive_ptr<c10d::Work>());
  }

  void arm() {
    std::lock_guard<std::mutex> lock(mu);
    if (buckets.empty()) {
      build();
    }
    pending.assign(buckets.size(), 0);
    for (auto b : bucket_of) {
      pending[b] += 1;
    }
    next = 0;
    armed = true;
  }

  void finish() {
    std::lock_guard<std::mutex> lock(mu);
    while (next < buckets.size()) {
      launch(next++);  // parameters that got no gradient this pass
    }
    armed = false;
    for (size_t b = 0; b < buckets.size(); ++b) {
      works[b]->wait();
      int64_t offset = 0;
      for (auto i : buckets[b]) {
        auto n = params[i].numel();
        auto part = buffers[b].narrow(0, offset, n).view(params[i].sizes());
        auto& g = params[i].mutable_grad();
        if (g.defined()) {
          g.copy_(part);
        } else {
          g = part.clone();
        }
        offset += n;
      }
      buffers[b] = at::Tensor();
      works[b].reset();
    }
  }
};

}  // namespace

extern "C" {

// Hooks the gradient accumulators of `n` parameters; buckets of about
// `bucket_numel` scalars are formed from the first backward pass's order.
char* forja_c10d_overlap_new(void* g, at::Tensor** params, size_t n, int64_t bucket_numel, void** out) {
  return guarded([&] {
    auto state = std::make_shared<Overlap>();
    state->backend = backend_of(g);
    state->bucket_numel = std::max<int64_t>(bucket_numel, 1);
    state->seen.assign(n, false);
    for (size_t i = 0; i < n; ++i) {
      state->params.push_back(*params[i]);
    }
    std::weak_ptr<Overlap> weak = state;
    for (size_t i = 0; i < n; ++i) {
      auto acc = torch::autograd::impl::grad_accumulator(state->params[i]);
      auto index = static_cast<int64_t>(i);
      acc->add_post_hook(std::make_unique<torch::autograd::utils::LambdaPostHook>(
          [weak, index](const torch::autograd::variable_list& outputs, const torch::autograd::variable_list&) {
            if (auto s = weak.lock()) {
              s->ready(index);
            }
            return outputs;
          }));
      state->accumulators.push_back(std::move(acc));
    }
    *out = new std::shared_ptr<Overlap>(state);
  });
}

void forja_c10d_overlap_free(void* o) { delete static_cast<std::shared_ptr<Overlap>*>(o); }

// The next backward pass sums buckets as they become ready.
char* forja_c10d_overlap_arm(void* o) {
  return guarded([&] { (*static_cast<std::shared_ptr<Overlap>*>(o))->arm(); });
}

// Sums what did not become ready, waits for every bucket and writes the sums
// into the parameters' gradients.
char* forja_c10d_overlap_finish(void* o) {
  return guarded([&] { (*static_cast<std::shared_ptr<Overlap>*>(o))->finish(); });
}

void forja_c10d_free_string(char* s) { std::free(s); }
void forja_c10d_free_bytes(uint8_t* data) { std::free(data); }

// A client of (with is_server: the host of) the TCPStore at host:port, its
// keys under `prefix`; operations wait up to timeout_ms.
char* forja_c10d_store_new(const char* host, uint16_t port, int is_server, const char* prefix, int64_t timeout_ms,
                           void** out) {
  return guarded([&] {
    c10d::TCPStoreOptions opts;
    opts.port = port;
    opts.isServer = is_server != 0;
    opts.numWorkers = std::nullopt;
    opts.waitWorkers = false;
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    *out = new Store{c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), tcp)};
  });
}

void forja_c10d_store_free(void* s) { delete static_cast<Store*>(s); }

char* forja_c10d_store_set(void* s, const char* key, const uint8_t* data, size_t len) {
  return guarded([&] { store_of(s)->set(std::string(key), std::vector<uint8_t>(data, data + len)); });
}

// Waits (up to the store's timeout) for `key`; the value is owned by the
// caller (forja_c10d_free_bytes).
char* forja_c10d_store_get(void* s, const char* key, uint8_t** data, size_t* len) {
  return guarded([&] {
    auto v = store_of(s)->get(std::string(key));
    *data = static_cast<uint8_t*>(std::malloc(v.empty() ? 1 : v.size()));
    if (*data == nullptr) {
      throw std::bad_alloc();
    }
    std::memcpy(*data, v.data(), v.size());
    *len = v.size();
  });
}

// Whether `key` is set, without waiting.
char* forja_c10d_store_check(void* s, const char* key, int* present) {
  return guarded([&] { *present = store_of(s)->check({std::string(key)}) ? 1 : 0; });
}

// The Gloo group of `world` ranks over the store, its device bound to
// interface `iface` (non-empty), else to `bind_host` (non-empty), else
// libtorch's default; collectives time out after timeout_ms.
char* forja_c10d_gloo_new(void* s, int rank, int world, const char* bind_host, const char* iface, int64_t timeout_ms,
                          void** out) {
  return guarded([&] {
    auto options = c10d::ProcessGroupGloo::Options::create(std::chrono::milliseconds(timeout_ms));
    if (iface != nullptr && iface[0] != '\0') {
      options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(std::string(iface)));
    } else if (bind_host != nullptr && bind_host[0] != '\0') {
      options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(std::string(bind_host)));
    } else {
      options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    options->threads = 1;
    c10::intrusive_ptr<c10d::Backend> pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store_of(s), rank, world, options);
    *out = new Group{pg};
  });
}

void forja_c10d_group_free(void* g) { delete static_cast<Group*>(g); }

// Sums the tensor across the ranks, in place.
char* forja_c10d_allreduce_sum(void* g, at::Tensor* t) {
  return guarded([&] {
    std::vector<at::Tensor> v{*t};
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    backend_of(g)->allreduce(v, opts)->wait();
  });
}

// Copies rank `root`'s tensor into every rank's, in place.
char* forja_c10d_broadcast(void* g, at::Tensor* t, int root) {
  return guarded([&] {
    std::vector<at::Tensor> v{*t};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    opts.rootTensor = 0;
    backend_of(g)->broadcast(v, opts)->wait();
  });
}

char* forja_c10d_barrier(void* g) {
  return guarded([&] { backend_of(g)->barrier(c10d::BarrierOptions())->wait(); });
}

}  // extern "C"
