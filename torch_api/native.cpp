// The torch frontend's native eager path: call signatures that the Python frontend validated, planned, compiled
// and launched once are recorded here; a later call with the same configuration and tensor metadata allocates its
// outputs and launches the compiled Triton kernel from C++, with no Python in between. Anything this file does not
// cover returns None, and the caller takes the Python path, which validates everything and raises the errors.
//
// Built on first use by fused_qkv/torch_api/native.py (g++ against the installed torch); see the README,
// "Eager host overhead".

#include <Python.h>
#include <dlfcn.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/PythonTorchFunctionTLS.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <torch/csrc/Dtype.h>
#include <torch/csrc/autograd/python_variable.h>

namespace {

// argument order of `call` after the configuration tuple (and of the tensors given to `add`): the main entry
// point's 12, or the fp8 entry point's 15
constexpr int kMainTensors = 12;  // qkv, q_weight, k_weight, cos, sin, positions, key_cache, value_cache,
                                  // slot_mapping, offsets, k_scale, v_scale
constexpr int kTensors = 15;      // ... then q_scale, k_scale_cache, v_scale_cache
constexpr int kQkv = 0, kKeyCache = 6, kValueCache = 7, kKScaleCache = 13, kVScaleCache = 14;
constexpr int kMainOutputs = 4;   // q, gate, k, v
constexpr int kOutputs = 5;       // ... then q_scales (the fp8 entry point)
constexpr int kMaxParams = 64;
constexpr size_t kMaxEntries = 512;

enum ParamKind : int { kTensorPtr = 0, kOutputPtr = 1, kI32 = 2, kI64 = 3, kF32 = 4, kNullPtr = 5 };

struct TensorSpec {
  bool present = false;
  std::vector<int64_t> sizes, strides;
  c10::ScalarType dtype = c10::ScalarType::Undefined;
  c10::Device device{c10::kCPU};
};

struct Entry {
  PyObject* cfg = nullptr;  // owned reference: the configuration values, compared by type and value
  int n_tensors = kMainTensors, n_outputs = kMainOutputs;  // the main entry point's, or the fp8 one's
  TensorSpec tensors[kTensors];
  // byte ranges around their data pointers of qkv, key cache, value cache, key and value scale caches
  int64_t spans[10] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  std::vector<std::pair<int, int64_t>> ok_pairs;  // (pair, pointer difference) checked exactly by the Python path
  bool out_present[kOutputs] = {false, false, false, false, false};
  c10::ScalarType out_dtype[kOutputs] = {};
  std::vector<int64_t> out_shape[kOutputs], out_strides[kOutputs];  // contiguous
  int64_t out_offset[kOutputs] = {0, 0, 0, 0, 0};  // bytes into the one allocation of all outputs
  int64_t out_total = 0;                             // bytes of that allocation
  c10::Device device{c10::kCPU};
  uintptr_t function = 0;
  unsigned grid0 = 0, block = 0, shared = 0;
  std::vector<std::pair<int, uint64_t>> params;  // (kind, index or value bits) in kernel parameter order

  ~Entry() { Py_XDECREF(cfg); }
};

// Never destroyed: an entry owns a Python reference, and C++ static destructors run after the interpreter has
// finalised (releasing it then aborts the process). `clear` empties it while Python is alive.
std::vector<std::unique_ptr<Entry>>& g_entries = *new std::vector<std::unique_ptr<Entry>>();
long long g_generation = 0;  // counts clears: an (generation, index) handle from `add` names one entry
// owned: the tuple subclasses `call` returns for 4 and 5 outputs (set_result_type), or null for plain tuples
PyTypeObject* g_result_type[2] = {nullptr, nullptr};

// CPU entries exist only in tests: their launch is recorded here instead of run
struct Recorded {
  bool valid = false;
  unsigned grid0 = 0, block = 0, shared = 0;
  std::vector<uint64_t> params;
};
Recorded g_recorded;

using LaunchFn = int (*)(void*, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, void*,
                         void**, void**);
using ErrorStringFn = int (*)(int, const char**);
LaunchFn g_launch = nullptr;
ErrorStringFn g_error_string = nullptr;

bool resolve_driver() {
  if (g_launch != nullptr) return true;
  void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
  if (lib == nullptr) {
    PyErr_SetString(PyExc_RuntimeError, "fused_qkv native launcher: cannot open libcuda.so.1");
    return false;
  }
  g_launch = reinterpret_cast<LaunchFn>(dlsym(lib, "cuLaunchKernel"));
  g_error_string = reinterpret_cast<ErrorStringFn>(dlsym(lib, "cuGetErrorString"));
  if (g_launch == nullptr) {
    PyErr_SetString(PyExc_RuntimeError, "fused_qkv native launcher: libcuda.so.1 has no cuLaunchKernel");
    return false;
  }
  return true;
}

bool same_config(PyObject* a, PyObject* b) {
  if (a == b) return true;
  if (!PyTuple_Check(a) || !PyTuple_Check(b)) return false;
  Py_ssize_t n = PyTuple_GET_SIZE(a);
  if (PyTuple_GET_SIZE(b) != n) return false;
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* x = PyTuple_GET_ITEM(a, i);
    PyObject* y = PyTuple_GET_ITEM(b, i);
    if (x == y) continue;
    if (Py_TYPE(x) != Py_TYPE(y)) return false;  // True and 1 compare equal; validation tells them apart
    int eq = PyObject_RichCompareBool(x, y, Py_EQ);
    if (eq != 1) {
      PyErr_Clear();
      return false;
    }
  }
  return true;
}

// A tensor this path may read metadata and pointers from: a plain dense tensor (or Parameter), not a Python
// subclass, fake, functional or batched wrapper.
bool plain(const at::Tensor& t) {
  const c10::TensorImpl* impl = t.unsafeGetTensorImpl();
  static const c10::DispatchKeySet wrappers = c10::DispatchKeySet({
      c10::DispatchKey::Python, c10::DispatchKey::Functionalize, c10::DispatchKey::FuncTorchBatched,
      c10::DispatchKey::FuncTorchGradWrapper, c10::DispatchKey::FuncTorchDynamicLayerFrontMode,
      c10::DispatchKey::Conjugate, c10::DispatchKey::Negative, c10::DispatchKey::ZeroTensor});
  return t.defined() && !impl->is_python_dispatch() && impl->has_storage() && t.layout() == c10::kStrided &&
         !impl->key_set().has_any(wrappers) && !t.is_nested();
}

bool matches(const TensorSpec& spec, const at::Tensor* t) {
  if (!spec.present) return t == nullptr;
  if (t == nullptr) return false;
  return t->scalar_type() == spec.dtype && t->device() == spec.device && t->sizes().equals(spec.sizes) &&
         t->strides().equals(spec.strides);
}

bool meets(int64_t a, int64_t a0, int64_t a1, int64_t b, int64_t b0, int64_t b1) {
  return a + a0 < b + b1 && b + b0 < a + a1;
}

bool pair_ok(const Entry& e, int pair, int64_t diff) {
  for (const auto& p : e.ok_pairs)
    if (p.first == pair && p.second == diff) return true;
  return false;
}

PyObject* wrap_or_none(const at::Tensor* t) {
  if (t == nullptr) Py_RETURN_NONE;
  return THPVariable_Wrap(*t);
}

// call(cfg, qkv, q_weight, k_weight, cos, sin, positions, key_cache, value_cache, slot_mapping, offsets, k_scale,
//      v_scale[, q_scale, k_scale_cache, v_scale_cache]) -> (q, gate, k, v[, q_scales]) with None for absent
//      outputs, or None: not recorded / not covered here
PyObject* native_call(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 1 + kMainTensors && nargs != 1 + kTensors) {
    PyErr_SetString(PyExc_TypeError, "fused_qkv native call: expected a configuration and 12 or 15 tensors or None");
    return nullptr;
  }
  const int n_tensors = static_cast<int>(nargs - 1);
  // a dispatch or torch-function mode observes calls: the Python path goes through the registered op
  if (c10::impl::TorchDispatchModeTLS::stack_len() > 0 || at::impl::torch_function_mode_enabled()) Py_RETURN_NONE;
  try {
    const at::Tensor* t[kTensors] = {};
    for (int i = 0; i < n_tensors; ++i) {
      PyObject* obj = args[1 + i];
      if (obj == Py_None) {
        t[i] = nullptr;
        continue;
      }
      if (!THPVariable_CheckExact(obj)) Py_RETURN_NONE;
      t[i] = &THPVariable_Unpack(obj);
      if (!plain(*t[i])) Py_RETURN_NONE;
    }
    if (t[kQkv] == nullptr || t[kKeyCache] == nullptr || t[kValueCache] == nullptr) Py_RETURN_NONE;
    for (int i : {kQkv, kKeyCache, kValueCache, kKScaleCache, kVScaleCache})
      if (t[i] != nullptr && t[i]->requires_grad()) Py_RETURN_NONE;

    const Entry* entry = nullptr;
    for (const auto& e : g_entries) {
      bool ok = e->n_tensors == n_tensors;
      for (int i = 0; i < n_tensors && ok; ++i) ok = matches(e->tensors[i], t[i]);
      if (ok && same_config(e->cfg, args[0])) {
        entry = e.get();
        break;
      }
    }
    if (entry == nullptr) Py_RETURN_NONE;

    const bool cuda = entry->device.is_cuda();
    void* stream = nullptr;
    if (cuda) {
      c10::impl::VirtualGuardImpl guard(c10::DeviceType::CUDA);
      if (guard.getDevice().index() != entry->device.index()) Py_RETURN_NONE;  // another current device
      stream = guard.getStream(entry->device).native_handle();
    }

    uint64_t ptr[kTensors];
    uint64_t any = 0;
    for (int i = 0; i < kTensors; ++i) {
      ptr[i] = t[i] == nullptr ? 0 : reinterpret_cast<uint64_t>(t[i]->data_ptr());
      any |= ptr[i];
    }
    if (any & 15) Py_RETURN_NONE;  // the kernel was compiled for 16-byte-aligned pointers
    const int64_t pq = static_cast<int64_t>(ptr[kQkv]), pk = static_cast<int64_t>(ptr[kKeyCache]),
                  pv = static_cast<int64_t>(ptr[kValueCache]);
    const int64_t* s = entry->spans;
    if (meets(pk, s[2], s[3], pv, s[4], s[5]) && !pair_ok(*entry, 0, pv - pk)) Py_RETURN_NONE;
    if (meets(pq, s[0], s[1], pk, s[2], s[3]) && !pair_ok(*entry, 1, pk - pq)) Py_RETURN_NONE;
    if (meets(pq, s[0], s[1], pv, s[4], s[5]) && !pair_ok(*entry, 2, pv - pq)) Py_RETURN_NONE;
    // the scale caches are written too: any meeting with qkv, a cache or each other goes to the checked path
    const int64_t where[5] = {pq, pk, pv, static_cast<int64_t>(ptr[kKScaleCache]),
                              static_cast<int64_t>(ptr[kVScaleCache])};
    for (int a = 3; a < 5; ++a) {
      if (t[a == 3 ? kKScaleCache : kVScaleCache] == nullptr) continue;
      for (int b = 0; b < 5; ++b) {
        if (b == a || (b >= 3 && t[b == 3 ? kKScaleCache : kVScaleCache] == nullptr)) continue;
        if (meets(where[a], s[2 * a], s[2 * a + 1], where[b], s[2 * b], s[2 * b + 1])) Py_RETURN_NONE;
      }
    }

    // One allocation holds every output (each contiguous, 256-byte aligned, of its own dtype); each output is a
    // tensor of its own on that storage, made without the dispatcher (S2, four outputs: 1.82 -> 1.26 us of host
    // time per call).
    const at::Tensor buf = at::empty({entry->out_total}, t[kQkv]->options().dtype(at::kByte));
    const uint64_t base = reinterpret_cast<uint64_t>(buf.data_ptr());
    at::Tensor out[kOutputs];
    uint64_t out_ptr[kOutputs] = {0, 0, 0, 0, 0};
    for (int j = 0; j < entry->n_outputs; ++j) {
      if (!entry->out_present[j]) continue;
      const caffe2::TypeMeta meta = caffe2::TypeMeta::fromScalarType(entry->out_dtype[j]);
      auto impl = c10::make_intrusive<c10::TensorImpl>(c10::Storage(buf.storage()), buf.key_set(), meta);
      impl->set_sizes_and_strides(entry->out_shape[j], entry->out_strides[j],
                                  entry->out_offset[j] / static_cast<int64_t>(meta.itemsize()));
      out[j] = at::Tensor(std::move(impl));
      out_ptr[j] = base + static_cast<uint64_t>(entry->out_offset[j]);
    }

    const size_t n = entry->params.size();
    uint64_t vals[kMaxParams];
    void* params[kMaxParams];
    for (size_t k = 0; k < n; ++k) {
      const auto& p = entry->params[k];
      switch (p.first) {
        case kTensorPtr: vals[k] = ptr[p.second]; break;
        case kOutputPtr: vals[k] = out_ptr[p.second]; break;
        case kNullPtr: vals[k] = 0; break;
        default: vals[k] = p.second; break;  // i32/f32 bits in the low 4 bytes (little-endian), or i64
      }
      params[k] = &vals[k];
    }
    if (entry->grid0 > 0) {
      if (cuda) {
        if (!resolve_driver()) return nullptr;
        int err = g_launch(reinterpret_cast<void*>(entry->function), entry->grid0, 1, 1, entry->block, 1, 1,
                           entry->shared, stream, params, nullptr);
        if (err != 0) {
          const char* msg = nullptr;
          if (g_error_string != nullptr) g_error_string(err, &msg);
          PyErr_Format(PyExc_RuntimeError, "fused_qkv native launcher: cuLaunchKernel failed: %s (%d)",
                       msg ? msg : "unknown error", err);
          return nullptr;
        }
      } else {
        g_recorded.valid = true;
        g_recorded.grid0 = entry->grid0;
        g_recorded.block = entry->block;
        g_recorded.shared = entry->shared;
        g_recorded.params.assign(vals, vals + n);
      }
    }
    // an instance of the result type (a 4- or 5-field tuple subclass: allocated as tuple.__new__ does, without
    // the Python-level __new__ of a namedtuple), or a plain tuple
    PyTypeObject* type = g_result_type[entry->n_outputs == kOutputs];
    PyObject* result = type != nullptr ? type->tp_alloc(type, entry->n_outputs) : PyTuple_New(entry->n_outputs);
    if (result == nullptr) return nullptr;
    for (int j = 0; j < entry->n_outputs; ++j) {
      PyObject* o = wrap_or_none(entry->out_present[j] ? &out[j] : nullptr);
      if (o == nullptr) {
        Py_DECREF(result);
        return nullptr;
      }
      PyTuple_SET_ITEM(result, j, o);
    }
    return result;
  } catch (const std::exception&) {
    // metadata this path cannot read (e.g. symbolic sizes): the Python path handles the call
    Py_RETURN_NONE;
  }
}

bool int_list(PyObject* seq, std::vector<int64_t>& out) {
  PyObject* fast = PySequence_Fast(seq, "expected a sequence of ints");
  if (fast == nullptr) return false;
  Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
  out.resize(n);
  for (Py_ssize_t i = 0; i < n; ++i) {
    out[i] = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(fast, i));
    if (out[i] == -1 && PyErr_Occurred()) {
      Py_DECREF(fast);
      return false;
    }
  }
  Py_DECREF(fast);
  return true;
}

// add(cfg, tensors, spans, out_shapes, out_dtypes, function, grid0, block, shared, params) -> (generation, index)
// tensors: the 12 tensors (or None) of a main-entry call the Python path validated, or the 15 of an fp8-entry
// call; their metadata is recorded. spans: 6 or 10 byte offsets (qkv, caches[, scale caches]); out_shapes and
// out_dtypes (torch dtypes): 4 or 5, None where absent. params: ((kind, value), ...) in kernel parameter order;
// value: argument index, output index, int or float.
PyObject* native_add(PyObject*, PyObject* args) {
  PyObject *cfg, *tensors, *spans, *out_shapes, *out_dtypes, *params;
  unsigned long long function;
  unsigned grid0, block, shared;
  if (!PyArg_ParseTuple(args, "O!O!O!O!O!KIIIO!", &PyTuple_Type, &cfg, &PyTuple_Type, &tensors, &PyTuple_Type,
                        &spans, &PyTuple_Type, &out_shapes, &PyTuple_Type, &out_dtypes, &function, &grid0, &block,
                        &shared, &PyTuple_Type, &params))
    return nullptr;
  const Py_ssize_t n_tensors = PyTuple_GET_SIZE(tensors);
  const bool fp8 = n_tensors == kTensors;
  const int n_outputs = fp8 ? kOutputs : kMainOutputs;
  if ((n_tensors != kMainTensors && !fp8) || PyTuple_GET_SIZE(spans) != (fp8 ? 10 : 6) ||
      PyTuple_GET_SIZE(out_shapes) != n_outputs || PyTuple_GET_SIZE(out_dtypes) != n_outputs ||
      PyTuple_GET_SIZE(params) > kMaxParams) {
    PyErr_SetString(PyExc_ValueError,
                    "fused_qkv native add: wrong number of tensors, spans, outputs, output dtypes or params");
    return nullptr;
  }
  auto e = std::make_unique<Entry>();
  e->n_tensors = static_cast<int>(n_tensors);
  e->n_outputs = n_outputs;
  for (int i = 0; i < e->n_tensors; ++i) {
    PyObject* obj = PyTuple_GET_ITEM(tensors, i);
    if (obj == Py_None) continue;
    if (!THPVariable_Check(obj)) {
      PyErr_Format(PyExc_TypeError, "fused_qkv native add: argument %d is not a tensor", i);
      return nullptr;
    }
    const at::Tensor& t = THPVariable_Unpack(obj);
    TensorSpec& spec = e->tensors[i];
    spec.present = true;
    spec.sizes = t.sizes().vec();
    spec.strides = t.strides().vec();
    spec.dtype = t.scalar_type();
    spec.device = t.device();
  }
  if (!e->tensors[kQkv].present) {
    PyErr_SetString(PyExc_ValueError, "fused_qkv native add: qkv is required");
    return nullptr;
  }
  e->device = e->tensors[kQkv].device;
  for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(spans); ++i) {
    e->spans[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(spans, i));
    if (PyErr_Occurred()) return nullptr;
  }
  for (int j = 0; j < n_outputs; ++j) {
    PyObject* shape = PyTuple_GET_ITEM(out_shapes, j);
    PyObject* dtype = PyTuple_GET_ITEM(out_dtypes, j);
    e->out_present[j] = shape != Py_None;
    if (!e->out_present[j]) continue;
    if (!THPDtype_Check(dtype)) {
      PyErr_Format(PyExc_TypeError, "fused_qkv native add: output %d needs a torch.dtype", j);
      return nullptr;
    }
    e->out_dtype[j] = reinterpret_cast<THPDtype*>(dtype)->scalar_type;
    if (!int_list(shape, e->out_shape[j])) return nullptr;
    std::vector<int64_t>& st = e->out_strides[j];
    st.assign(e->out_shape[j].size(), 1);
    int64_t numel = 1;
    for (size_t d = st.size(); d-- > 0;) {
      st[d] = numel;
      numel *= e->out_shape[j][d];
    }
    e->out_offset[j] = (e->out_total + 255) / 256 * 256;
    e->out_total = e->out_offset[j] + numel * static_cast<int64_t>(c10::elementSize(e->out_dtype[j]));
  }
  for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(params); ++k) {
    int kind;
    PyObject* value;
    if (!PyArg_ParseTuple(PyTuple_GET_ITEM(params, k), "iO", &kind, &value)) return nullptr;
    uint64_t bits = 0;
    if (kind == kF32) {
      float f = static_cast<float>(PyFloat_AsDouble(value));
      if (PyErr_Occurred()) return nullptr;
      uint32_t b;
      std::memcpy(&b, &f, 4);
      bits = b;
    } else if (kind == kI32) {
      long long v = PyLong_AsLongLong(value);
      if (PyErr_Occurred()) return nullptr;
      if (v < INT32_MIN || v > INT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "fused_qkv native add: i32 parameter out of range");
        return nullptr;
      }
      bits = static_cast<uint32_t>(static_cast<int32_t>(v));
    } else if (kind == kI64 || kind == kTensorPtr || kind == kOutputPtr || kind == kNullPtr) {
      long long v = value == Py_None ? 0 : PyLong_AsLongLong(value);
      if (PyErr_Occurred()) return nullptr;
      if ((kind == kTensorPtr && (v < 0 || v >= e->n_tensors)) ||
          (kind == kOutputPtr && (v < 0 || v >= e->n_outputs)) ||
          (kind == kTensorPtr && !e->tensors[v].present) || (kind == kOutputPtr && !e->out_present[v])) {
        PyErr_SetString(PyExc_ValueError, "fused_qkv native add: pointer parameter names an absent tensor");
        return nullptr;
      }
      bits = static_cast<uint64_t>(v);
    } else {
      PyErr_Format(PyExc_ValueError, "fused_qkv native add: unknown parameter kind %d", kind);
      return nullptr;
    }
    e->params.emplace_back(kind, bits);
  }
  e->function = static_cast<uintptr_t>(function);
  e->grid0 = grid0;
  e->block = block;
  e->shared = shared;
  Py_INCREF(cfg);
  e->cfg = cfg;
  if (g_entries.size() >= kMaxEntries) {
    g_entries.clear();
    ++g_generation;
  }
  g_entries.push_back(std::move(e));
  return Py_BuildValue("(Ln)", g_generation, static_cast<Py_ssize_t>(g_entries.size() - 1));
}

// add_ok_pair(generation, index, pair, difference): pair 0 = key/value cache, 1 = qkv/key cache, 2 = qkv/value
// cache. A handle from before the last clear names nothing any more: ignored.
PyObject* native_add_ok_pair(PyObject*, PyObject* args) {
  long long generation;
  Py_ssize_t index;
  int pair;
  long long diff;
  if (!PyArg_ParseTuple(args, "LniL", &generation, &index, &pair, &diff)) return nullptr;
  if (generation != g_generation || index < 0 || static_cast<size_t>(index) >= g_entries.size()) Py_RETURN_NONE;
  Entry& e = *g_entries[index];
  if (e.ok_pairs.size() < 64 && !pair_ok(e, pair, diff)) e.ok_pairs.emplace_back(pair, diff);
  Py_RETURN_NONE;
}

PyObject* native_clear(PyObject*, PyObject*) {
  g_entries.clear();
  ++g_generation;
  g_recorded = Recorded();
  Py_RETURN_NONE;
}

// set_result_type(cls, n=4): calls of n outputs (4: the main entry point, 5: the fp8 one) return instances of
// cls, a subclass of tuple with no instance dictionary (a NamedTuple of n fields), instead of plain tuples.
PyObject* native_set_result_type(PyObject*, PyObject* args) {
  PyObject* cls;
  int n = kMainOutputs;
  if (!PyArg_ParseTuple(args, "O|i", &cls, &n)) return nullptr;
  if (!PyType_Check(cls) || !PyType_IsSubtype(reinterpret_cast<PyTypeObject*>(cls), &PyTuple_Type) ||
      reinterpret_cast<PyTypeObject*>(cls)->tp_dictoffset != 0) {
    PyErr_SetString(PyExc_TypeError, "fused_qkv native set_result_type: expected a tuple subclass without __dict__");
    return nullptr;
  }
  if (n != kMainOutputs && n != kOutputs) {
    PyErr_SetString(PyExc_ValueError, "fused_qkv native set_result_type: n must be 4 or 5");
    return nullptr;
  }
  Py_INCREF(cls);
  Py_XSETREF(g_result_type[n == kOutputs], reinterpret_cast<PyTypeObject*>(cls));
  Py_RETURN_NONE;
}

PyObject* native_size(PyObject*, PyObject*) { return PyLong_FromSize_t(g_entries.size()); }

// last_recorded() -> (grid0, block, shared, (param bits, ...)) of the last CPU (test) call, or None
PyObject* native_last_recorded(PyObject*, PyObject*) {
  if (!g_recorded.valid) Py_RETURN_NONE;
  PyObject* vals = PyTuple_New(static_cast<Py_ssize_t>(g_recorded.params.size()));
  if (vals == nullptr) return nullptr;
  for (size_t k = 0; k < g_recorded.params.size(); ++k)
    PyTuple_SET_ITEM(vals, k, PyLong_FromUnsignedLongLong(g_recorded.params[k]));
  return Py_BuildValue("(IIIN)", g_recorded.grid0, g_recorded.block, g_recorded.shared, vals);
}

PyMethodDef kMethods[] = {
    {"call", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(native_call)), METH_FASTCALL,
     "Launch a recorded call signature; None when this call is not covered."},
    {"add", native_add, METH_VARARGS, "Record a validated call signature."},
    {"add_ok_pair", native_add_ok_pair, METH_VARARGS, "Accept a checked pointer difference of two meeting arrays."},
    {"clear", native_clear, METH_NOARGS, "Forget every recorded call signature."},
    {"set_result_type", native_set_result_type, METH_VARARGS,
     "Return instances of this tuple subclass from calls of n (4 or 5) outputs."},
    {"size", native_size, METH_NOARGS, "Number of recorded call signatures."},
    {"last_recorded", native_last_recorded, METH_NOARGS, "The last recorded CPU launch (tests)."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef kModule = {PyModuleDef_HEAD_INIT, "fused_qkv_native", nullptr, -1, kMethods};

}  // namespace

PyMODINIT_FUNC PyInit_fused_qkv_native() { return PyModule_Create(&kModule); }
