#pragma once
/// @file context.cuh
/// `device::Cuda`, the tag of the NVIDIA GPU device: device memory (plain cudaMalloc, never managed
/// memory), one CUDA stream and one cuBLAS handle per context, staging buffers for the small host
/// arrays kernels read (masks, targets, lengths), and the error checks that turn every failing CUDA
/// or cuBLAS call into a `distill::cuda_error` naming the call, the file and the line.
/// nvcc only, with DISTILL_ENABLE_CUDA (link `distill::cuda`).

#if !defined(__CUDACC__) || !defined(DISTILL_ENABLE_CUDA)
#error "distill/device/cuda.hpp is CUDA code: compile with nvcc and link distill::cuda (defines DISTILL_ENABLE_CUDA)"
#endif

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "distill/detail/macros.hpp"
#include "distill/device.hpp"
#include "distill/error.hpp"
#include "distill/tensor.hpp"

namespace distill {

/// A CUDA runtime or cuBLAS call failed. `what()` names the call, the file and line, and the error.
class cuda_error : public error {
public:
    cuda_error(const std::string& call, const char* file, int line, const std::string& why)
        : error(std::string(file) + ":" + std::to_string(line) + ": " + call + " failed: " + why), call_(call) {}
    /// The failing call as written in the source.
    const std::string& call() const noexcept { return call_; }

private:
    std::string call_;
};

namespace device::detail {

inline void check(cudaError_t e, const char* call, const char* file, int line) {
    if (e != cudaSuccess) {
        (void)cudaGetLastError();  // a recoverable error must not resurface at the next launch check
        throw cuda_error(call, file, line, std::string(cudaGetErrorName(e)) + " (" + cudaGetErrorString(e) + ")");
    }
}

inline void check(cublasStatus_t s, const char* call, const char* file, int line) {
    if (s != CUBLAS_STATUS_SUCCESS)
        throw cuda_error(call, file, line, std::string(cublasGetStatusName(s)) + " (" + cublasGetStatusString(s) + ")");
}

}  // namespace device::detail
}  // namespace distill

/// Checks a CUDA runtime or cuBLAS call: throws `distill::cuda_error` with the call, file and line.
#define DISTILL_CUDA_CHECK(call) ::distill::device::detail::check((call), #call, __FILE__, __LINE__)
/// Checks the launch of the kernel just started (bad configuration, no device code for this GPU).
#define DISTILL_CUDA_CHECK_LAUNCH(name) \
    ::distill::device::detail::check(cudaGetLastError(), name "<<<...>>>", __FILE__, __LINE__)
/// Launches `kernel<<<grid, block, 0, stream>>>(args...)` and checks the launch, naming the kernel
/// as written: the one way the Cuda kernels are started.
#define DISTILL_CUDA_LAUNCH(kernel, grid, block, stream, ...)  \
    do {                                                       \
        kernel<<<(grid), (block), 0, (stream)>>>(__VA_ARGS__); \
        DISTILL_CUDA_CHECK_LAUNCH(#kernel);                    \
    } while (0)

namespace distill::device {

namespace detail {

/// What a `Cuda` tag points to: the GPU ordinal, its stream, its cuBLAS handle and staging buffers.
/// Shared by every copy of the tag; destroyed with the last one.
struct State {
    int ordinal = 0;
    cudaStream_t stream = nullptr;
    cublasHandle_t blas = nullptr;
    cudaDeviceProp props{};
    // Growable device buffers for host arrays passed to kernels and for reduction partials; they
    // grow to the largest request and then stay, so a training step allocates nothing.
    std::vector<std::pair<void*, std::size_t>> staging = std::vector<std::pair<void*, std::size_t>>(9, {nullptr, 0});
    // The bf16 copies of GEMM operands under precision::bf16 (grows like a staging buffer).
    std::pair<void*, std::size_t> bf16_scratch{nullptr, 0};

    explicit State(int device) : ordinal(device) {
        DISTILL_CUDA_CHECK(cudaSetDevice(device));
        DISTILL_CUDA_CHECK(cudaGetDeviceProperties(&props, device));
        DISTILL_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
        DISTILL_CUDA_CHECK(cublasCreate(&blas));
        DISTILL_CUDA_CHECK(cublasSetStream(blas, stream));
        // fp32 GEMMs in full fp32 unless tf32 is asked for (Cuda::allow_tf32): parity with the CPU
        DISTILL_CUDA_CHECK(cublasSetMathMode(blas, CUBLAS_DEFAULT_MATH));
    }
    State(const State&) = delete;
    State& operator=(const State&) = delete;
    ~State() {
        cudaSetDevice(ordinal);
        if (stream) cudaStreamSynchronize(stream);
        for (auto& [p, n] : staging)
            if (p) cudaFree(p);
        if (bf16_scratch.first) cudaFree(bf16_scratch.first);
        if (blas) cublasDestroy(blas);
        if (stream) cudaStreamDestroy(stream);
    }
};

inline int device_count() noexcept {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();  // clear the sticky "no device" error
        return 0;
    }
    return n;
}

/// Why GPU `ordinal` cannot run precision::bf16 GEMMs, or "" when it can: cuBLAS multiplies bf16
/// operands (CUDA_R_16BF with fp32 accumulation) on compute capability 8.0 (Ampere) and newer.
inline std::string bf16_unsupported_reason(int ordinal) {
    const int n = device_count();
    if (ordinal < 0 || ordinal >= n)
        return "GPU " + std::to_string(ordinal) + " requested, " + std::to_string(n) + " visible";
    int major = 0, minor = 0;
    DISTILL_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, ordinal));
    DISTILL_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, ordinal));
    if (major >= 8) return "";
    cudaDeviceProp props{};
    DISTILL_CUDA_CHECK(cudaGetDeviceProperties(&props, ordinal));
    return "GPU " + std::to_string(ordinal) + " (" + props.name + ") has compute capability " + std::to_string(major) +
           "." + std::to_string(minor) + "; cuBLAS's bf16 GEMMs need 8.0 (Ampere) or newer";
}

inline std::shared_ptr<State> default_state() {
    static std::mutex mutex;
    static std::weak_ptr<State> shared;
    std::lock_guard<std::mutex> lock(mutex);
    if (auto s = shared.lock()) return s;
    auto s = std::make_shared<State>(0);
    shared = s;
    return s;
}

/// Whether p points to memory the GPU reads directly (device or managed memory).
inline bool is_device_pointer(const void* p) {
    if (!p) return false;
    cudaPointerAttributes a{};
    if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
        (void)cudaGetLastError();
        return false;
    }
    return a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged;
}

}  // namespace detail

/// The NVIDIA GPU device: tensors in device memory, kernels on one CUDA stream, GEMMs through
/// cuBLAS. A tag as cheap to copy as the others: copies share one context (GPU, stream, cuBLAS
/// handle), so everything a model, its loss and its optimizer launch runs in order on one stream.
/// `Cuda()` is the process-wide context of GPU 0; `Cuda(ordinal)` creates a new context (a new
/// stream) on that GPU.
///
/// Precision: `Cuda(precision::bf16)` (the shared context) or `Cuda(ordinal, precision::bf16)`
/// rounds both operands of every `gemm` to bf16 (round to nearest even, the rounding of
/// device::Cpu's bf16 GEMMs) and multiplies them with cuBLAS in fp32 accumulation and output
/// (cublasGemmEx, CUDA_R_16BF, CUBLAS_COMPUTE_32F): the products of `Cpu(threads, precision::bf16)`
/// up to the order of the sums. Everything else stays fp32, as on Cpu: the attention's strided
/// batched products, master weights, gradients, optimizer state, losses, norms. It needs compute
/// capability 8.0 or newer; elsewhere it is refused with a config_error naming device.precision.
/// The precision belongs to the tag, not the context: copies of a tag keep it, and an fp32 tag and
/// a bf16 tag may share one context (one stream).
///
/// Host↔device transfers happen where data enters and leaves: `copy` between host and device
/// memory (batches in, metrics and checkpoints out) waits for the stream; device-to-device copies
/// and every kernel are asynchronous. Kernels that take small host arrays (masks, targets, top-k
/// ids, decode lengths) accept host or device pointers and stage host ones through the context's
/// buffers. Every kernel is deterministic: no atomics, reductions in a fixed order.
struct Cuda {
    static constexpr memory_space memory = memory_space::cuda;
    static constexpr const char* name = "cuda";

    /// The shared context of GPU 0. Throws `cuda_error` when no GPU is visible.
    Cuda() : state_(detail::default_state()) {}
    /// The shared context of GPU 0, GEMMs in `p` (bf16: `bf16_supported()`, else config_error).
    explicit Cuda(precision p) : state_(detail::default_state()) { set_precision(p); }
    /// A new context (its own stream and cuBLAS handle) on GPU `ordinal`, GEMMs in `p`.
    explicit Cuda(int ordinal, precision p = precision::fp32) {
        const int n = detail::device_count();
        if (ordinal < 0 || ordinal >= n)
            throw config_error("device.ordinal",
                               "GPU " + std::to_string(ordinal) + " requested, " + std::to_string(n) + " visible");
        state_ = std::make_shared<detail::State>(ordinal);
        set_precision(p);
    }

    /// Number of GPUs visible to this process (0 without a driver or device).
    static int visible_devices() noexcept { return detail::device_count(); }
    /// Why `precision::bf16` cannot run on GPU `ordinal` ("" when it can): no such GPU, or one older
    /// than compute capability 8.0 (detected at run time).
    static std::string bf16_unsupported_reason(int ordinal = 0) { return detail::bf16_unsupported_reason(ordinal); }
    static bool bf16_supported(int ordinal = 0) { return bf16_unsupported_reason(ordinal).empty(); }
    /// The arithmetic of this tag's `gemm`s.
    precision compute_precision() const noexcept { return compute_; }

    void* allocate(std::size_t bytes) const {
        activate();
        void* p = nullptr;
        DISTILL_CUDA_CHECK(cudaMalloc(&p, bytes ? (bytes + 255) / 256 * 256 : 256));
        return p;
    }
    void deallocate(void* p, std::size_t) const noexcept {
        if (!p) return;
        cudaSetDevice(state_->ordinal);
        cudaStreamSynchronize(state_->stream);  // no kernel of ours may still read it
        cudaFree(p);
    }
    void fill_zero(void* p, std::size_t bytes) const {
        if (bytes) DISTILL_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, stream()));
    }
    /// Copies between any two of host and device memory (unified addressing picks the direction).
    /// Returns once host memory involved may be read or reused; device-to-device stays asynchronous.
    void copy(void* dst, const void* src, std::size_t bytes) const {
        if (!bytes) return;
        DISTILL_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream()));
        if (!detail::is_device_pointer(dst) || !detail::is_device_pointer(src)) synchronize();
    }

    /// Waits until everything launched on this context's stream has finished.
    void synchronize() const { DISTILL_CUDA_CHECK(cudaStreamSynchronize(stream())); }
    cudaStream_t stream() const noexcept { return state_->stream; }
    cublasHandle_t cublas() const noexcept { return state_->blas; }
    int ordinal() const noexcept { return state_->ordinal; }
    const cudaDeviceProp& properties() const noexcept { return state_->props; }
    /// Lets cuBLAS run fp32 GEMMs on the tensor cores in tf32 (about 8× the fp32 rate on sm_80+, 10
    /// mantissa bits in the products). Off by default: the parity tests compare full fp32.
    void allow_tf32(bool on) const {
        DISTILL_CUDA_CHECK(cublasSetMathMode(cublas(), on ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
    }

    /// A device buffer of at least `bytes` for staging slot `slot` (0..8), reused across calls.
    void* staging(int slot, std::size_t bytes) const {
        return grown(state_->staging.at(static_cast<std::size_t>(slot)), bytes);
    }
    /// `p` itself when the GPU can read it, else a copy of its `n` elements in staging slot `slot`.
    template <class T>
    const T* on_device(const T* p, std::size_t n, int slot) const {
        if (!p || detail::is_device_pointer(p)) return p;
        void* d = staging(slot, n * sizeof(T));
        DISTILL_CUDA_CHECK(cudaMemcpyAsync(d, p, n * sizeof(T), cudaMemcpyHostToDevice, stream()));
        return static_cast<const T*>(d);
    }

    /// A device buffer of at least `bytes` for the bf16 copies of one GEMM's operands, reused
    /// across calls (the stream orders its uses).
    void* bf16_scratch(std::size_t bytes) const { return grown(state_->bf16_scratch, bytes); }

private:
    void activate() const { DISTILL_CUDA_CHECK(cudaSetDevice(state_->ordinal)); }

    // `buffer` (a device pointer and its bytes) with room for `bytes`: reallocated at twice its size or
    // more when it is short, once the stream is done with the old one
    void* grown(std::pair<void*, std::size_t>& buffer, std::size_t bytes) const {
        auto& [p, n] = buffer;
        if (n < bytes) {
            if (p) {
                synchronize();
                DISTILL_CUDA_CHECK(cudaFree(p));
                p = nullptr;
            }
            const std::size_t size = std::max<std::size_t>(bytes, 2 * n);
            DISTILL_CUDA_CHECK(cudaMalloc(&p, size));
            n = size;
        }
        return p;
    }

    void set_precision(precision p) {
        if (p == precision::bf16) {
            const std::string why = bf16_unsupported_reason(state_->ordinal);
            if (!why.empty()) throw config_error("device.precision", "bf16 is refused: " + why);
        }
        compute_ = p;
    }
    std::shared_ptr<detail::State> state_;
    precision compute_ = precision::fp32;
};

namespace detail {

// Staging slots, one per kind of host array, so two arrays of one call never share a buffer.
inline constexpr int slot_mask = 0, slot_index = 1, slot_values = 2, slot_partials = 3, slot_order = 4,
                     slot_segments = 5, slot_misc = 6, slot_kv = 7, slot_positions = 8;

inline constexpr int warp = 32;

inline int blocks_for(std::int64_t n, int threads, std::int64_t cap = 65535LL * 8) {
    const std::int64_t b = (n + threads - 1) / threads;
    return static_cast<int>(b < 1 ? 1 : (b > cap ? cap : b));
}

}  // namespace detail
}  // namespace distill::device
