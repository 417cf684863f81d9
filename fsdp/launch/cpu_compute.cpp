#include "fsdp/launch/cpu_compute.h"

#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <dlfcn.h>

#include <cstdint>
#include <filesystem>
#include <stdexcept>

#include "fsdp/host_allocator.h"

namespace fsdp::launch {
namespace {

// The library that defines sgemm_, the Fortran BLAS entry point that ATen's
// cpublas::gemm calls for float matrix products. Its dlopen handle lets us ask
// that library (and no other) for its vendor functions. Not closed: the
// library stays loaded for the life of the process anyway (libtorch needs it).
struct LoadedBlas {
  void* handle = nullptr;
  std::string path;
};

LoadedBlas find_loaded_blas() {
  void* gemm = dlsym(RTLD_DEFAULT, "sgemm_");
  if (gemm == nullptr) return {};
  Dl_info info{};
  if (dladdr(gemm, &info) == 0 || info.dli_fname == nullptr) return {};
  LoadedBlas blas;
  std::error_code error;
  const auto resolved = std::filesystem::canonical(info.dli_fname, error);
  blas.path = error ? std::string(info.dli_fname) : resolved.string();
  blas.handle = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
  return blas;
}

// Found once: the library cannot change while the process runs.
const LoadedBlas& loaded_blas() {
  static const LoadedBlas blas = find_loaded_blas();
  return blas;
}

template <typename Function>
Function* find_function(const LoadedBlas& blas, const char* name) {
  if (blas.handle == nullptr) return nullptr;
  return reinterpret_cast<Function*>(dlsym(blas.handle, name));
}

// OpenBLAS's openblas_get_config() reads "OpenBLAS 0.3.21 DYNAMIC_ARCH NO_AFFINITY Zen
// MAX_THREADS=64".
std::string first_two_words(const std::string& text) {
  const auto first = text.find(' ');
  if (first == std::string::npos) return text;
  const auto second = text.find(' ', first + 1);
  return text.substr(0, second);
}

bool describe_openblas(const LoadedBlas& loaded, BlasLibrary& blas) {
  auto* get_config = find_function<char*()>(loaded, "openblas_get_config");
  if (get_config == nullptr) return false;
  blas.name = first_two_words(get_config());
  if (auto* get_parallel = find_function<int()>(loaded, "openblas_get_parallel")) {
    const int parallel = get_parallel();
    blas.build = parallel == 0 ? "serial" : parallel == 1 ? "pthreads" : "openmp";
  }
  if (auto* get_core = find_function<char*()>(loaded, "openblas_get_corename")) {
    blas.build += std::string(blas.build.empty() ? "" : ", ") + "core " + get_core();
  }
  blas.optimised = true;
  return true;
}

bool describe_blis(const LoadedBlas& loaded, BlasLibrary& blas) {
  auto* get_version = find_function<const char*()>(loaded, "bli_info_get_version_str");
  if (get_version == nullptr) {
    // Debian's BLIS builds libblas.so.3 exporting only the BLAS interface, in
    // .../blis-openmp/ or .../blis-pthread/: the directory says what it is.
    const auto directory = std::filesystem::path(loaded.path).parent_path().filename().string();
    if (directory.rfind("blis-", 0) != 0) return false;
    blas.name = "BLIS";
    blas.build = directory.substr(5);
    blas.optimised = true;
    return true;
  }
  blas.name = std::string("BLIS ") + get_version();
  if (auto* get_arch = find_function<int()>(loaded, "bli_arch_query_id")) {
    if (auto* arch_name = find_function<const char*(int)>(loaded, "bli_arch_string")) {
      blas.build = std::string("arch ") + arch_name(get_arch());
    }
  }
  blas.optimised = true;
  return true;
}

bool describe_mkl(const LoadedBlas& loaded, BlasLibrary& blas) {
  auto* get_version = find_function<void(char*, int)>(loaded, "MKL_Get_Version_String");
  if (get_version == nullptr) return false;
  char version[256] = {};
  get_version(version, sizeof(version) - 1);
  blas.name = version;
  blas.optimised = true;
  return true;
}

}  // namespace

BlasLibrary find_blas() {
  BlasLibrary blas;
  const LoadedBlas& loaded = loaded_blas();
  if (loaded.handle == nullptr) {
    // No sgemm_ in the global scope: libtorch carries its BLAS inside (PyPI
    // wheels link MKL or OpenBLAS statically). Its build summary says which.
    const std::string config = at::show_config();
    blas.path = "built into libtorch";
    if (config.find("BLAS_INFO=mkl") != std::string::npos) {
      blas.name = "Intel MKL";
      blas.optimised = true;
    } else if (config.find("BLAS_INFO=open") != std::string::npos) {
      blas.name = "OpenBLAS";
      blas.optimised = true;
    } else {
      blas.name = "unidentified BLAS";
    }
    return blas;
  }
  blas.path = loaded.path;
  if (describe_openblas(loaded, blas) || describe_blis(loaded, blas) ||
      describe_mkl(loaded, blas)) {
    return blas;
  }
  // Debian installs the netlib implementation as .../blas/libblas.so.3.
  blas.name = loaded.path.find("/blas/") != std::string::npos ? "reference BLAS (netlib)"
                                                              : "unidentified BLAS";
  return blas;
}

void set_compute_threads(int threads) {
  if (threads < 1) {
    throw std::invalid_argument("set_compute_threads: " + std::to_string(threads) +
                                " threads (expected at least 1)");
  }
  at::set_num_threads(threads);
  const LoadedBlas& loaded = loaded_blas();
  if (auto* set = find_function<void(int)>(loaded, "openblas_set_num_threads")) set(threads);
  // BLIS's dim_t is a 64-bit integer in every Debian build.
  if (auto* set = find_function<void(std::int64_t)>(loaded, "bli_thread_set_num_threads")) {
    set(threads);
  }
  if (auto* set = find_function<void(int)>(loaded, "MKL_Set_Num_Threads")) set(threads);
}

ComputeThreads current_compute_threads() {
  ComputeThreads threads;
  threads.openmp = at::get_num_threads();
  const LoadedBlas& loaded = loaded_blas();
  if (auto* get = find_function<int()>(loaded, "openblas_get_num_threads")) {
    threads.blas = get();
  } else if (auto* get = find_function<std::int64_t()>(loaded, "bli_thread_get_num_threads")) {
    threads.blas = static_cast<int>(get());
  } else if (auto* get = find_function<int()>(loaded, "MKL_Get_Max_Threads")) {
    threads.blas = get();
  }
  return threads;
}

std::string describe_compute(const BlasLibrary& blas) {
  std::string text = "BLAS " + blas.name;
  if (!blas.build.empty()) text += " (" + blas.build + ")";
  const ComputeThreads threads = current_compute_threads();
  const bool agree = threads.blas < 0 || threads.blas == threads.openmp;
  text += ", " + std::to_string(threads.openmp) + " compute thread" +
          (threads.openmp == 1 ? "" : "s") + " per rank";
  if (!agree || threads.blas >= 0) {
    text += " (OpenMP " + std::to_string(threads.openmp) + ", BLAS " +
            (threads.blas < 0 ? std::string("own pool") : std::to_string(threads.blas)) + ")";
  }
  return text + "; host allocator " + host_allocator_name();
}

std::string reference_blas_warning(const BlasLibrary& blas) {
  if (blas.optimised) return {};
  return "WARNING: libtorch's matrix products run on the " + blas.name + " (" + blas.path +
         "), which is 10x or more slower than an optimised one.\n"
         "WARNING: install one and point libblas.so.3 at it (scripts/setup.sh does both):\n"
         "WARNING:   apt-get install libopenblas0-openmp && "
         "update-alternatives --config libblas.so.3-x86_64-linux-gnu\n";
}

}  // namespace fsdp::launch
