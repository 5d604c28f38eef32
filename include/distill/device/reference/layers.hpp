#pragma once
/// @file reference/layers.hpp
/// The host-memory base every host device derives from (`HostMemory`), the `device::Reference` tag,
/// and its layer kernels (the contract's layer, Llama-block and decoding groups): each as the
/// plainest loop that computes it, single-threaded. It is the oracle the fast devices are tested
/// against, and it runs every scalar type (gradient checks use `double`). Each kernel names the
/// PyTorch function it mirrors. Its other parts: `reference/{losses,optim,encoder}.hpp`.

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <string>

#include "distill/detail/math.hpp"
#include "distill/error.hpp"
#include "distill/tensor.hpp"

namespace distill::device {

/// Host memory shared by the host devices: 64-byte aligned (one cache line, one AVX-512 vector).
struct HostMemory {
    static constexpr memory_space memory = memory_space::host;
    /// Throws distill::error when the memory is not there. Arenas are zeroed right away, so an
    /// allocation Linux would grant by overcommitting would end in the OOM killer instead: one larger
    /// than the memory available (a model or batch too big for this machine) is refused up front.
    void* allocate(std::size_t bytes) const {
        if (bytes == 0) bytes = 64;
        constexpr std::size_t check_above = std::size_t(256) << 20;
        const std::size_t available = bytes > check_above ? available_bytes() : SIZE_MAX;
        void* p = bytes <= available ? std::aligned_alloc(64, (bytes + 63) / 64 * 64) : nullptr;
        if (!p)
            throw error("cannot allocate " + std::to_string(bytes >> 20) + " MiB of host memory" +
                        (available != SIZE_MAX ? " (" + std::to_string(available >> 20) + " MiB available)" : "") +
                        ": reduce the model, the batch size or the context length");
        return p;
    }
    void deallocate(void* p, std::size_t) const noexcept { std::free(p); }
    /// MemAvailable + SwapFree from /proc/meminfo; SIZE_MAX where that cannot be read.
    static std::size_t available_bytes() {
        std::ifstream in("/proc/meminfo");
        std::string key;
        std::size_t kib = 0, total = 0;
        bool found = false;
        while (in >> key >> kib) {
            if (key == "MemAvailable:" || key == "SwapFree:") {
                total += kib << 10;
                found = true;
            }
            in.ignore(64, '\n');
        }
        return found ? total : SIZE_MAX;
    }
    void fill_zero(void* p, std::size_t bytes) const noexcept { std::memset(p, 0, bytes); }
    void copy(void* dst, const void* src, std::size_t bytes) const noexcept { std::memmove(dst, src, bytes); }
};

/// The plain-loop oracle device.
struct Reference : HostMemory {
    static constexpr const char* name = "reference";
    int threads() const noexcept { return 1; }
};

// ---- GEMM ---------------------------------------------------------------------------------------

/// C(M,N) = alpha * op(A)(M,K) * op(B)(K,N) + beta * C, all row-major; op(X) = X or X^T.
/// A is (M,K) with leading dimension lda, or (K,M) when trans_a; B is (K,N), or (N,K) when trans_b.
/// beta == 0 overwrites C (NaNs in C do not propagate), as BLAS does.  Mirrors torch.addmm.
template <class T>
void gemm(const Reference&, bool trans_a, bool trans_b, int M, int N, int K, T alpha, const T* A, int lda, const T* B,
          int ldb, T beta, T* C, int ldc) {
    for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) {
            T acc = 0;
            for (int k = 0; k < K; ++k) {
                const T a = trans_a ? A[k * lda + i] : A[i * lda + k];
                const T b = trans_b ? B[j * ldb + k] : B[k * ldb + j];
                acc += a * b;
            }
            T& c = C[i * ldc + j];
            c = alpha * acc + (beta == T(0) ? T(0) : beta * c);
        }
}

/// `batch` independent GEMMs; matrix b of A, B, C starts at b * stride_{a,b,c}.  Mirrors torch.baddbmm.
template <class T>
void gemm_strided_batched(const Reference& dev, bool trans_a, bool trans_b, int M, int N, int K, T alpha, const T* A,
                          int lda, std::int64_t stride_a, const T* B, int ldb, std::int64_t stride_b, T beta, T* C,
                          int ldc, std::int64_t stride_c, int batch) {
    for (int b = 0; b < batch; ++b)
        gemm(dev, trans_a, trans_b, M, N, K, alpha, A + b * stride_a, lda, B + b * stride_b, ldb, beta,
             C + b * stride_c, ldc);
}

// ---- elementwise and row kernels -----------------------------------------------------------------

/// out(N,OC) += bias(OC) broadcast over rows.
template <class T>
void add_bias(const Reference&, T* out, const T* bias, int N, int OC) {
    for (int n = 0; n < N; ++n)
        for (int o = 0; o < OC; ++o) out[n * OC + o] += bias[o];
}

/// dbias(OC) += sum over rows of dout(N,OC).
template <class T>
void bias_grad(const Reference&, T* dbias, const T* dout, int N, int OC) {
    for (int n = 0; n < N; ++n)
        for (int o = 0; o < OC; ++o) dbias[o] += dout[n * OC + o];
}

/// out = a + b, n elements (the residual connection).
template <class T>
void add(const Reference&, T* out, const T* a, const T* b, std::int64_t n) {
    for (std::int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

/// y += x, n elements (gradient accumulation).
template <class T>
void accumulate(const Reference&, T* y, const T* x, std::int64_t n) {
    for (std::int64_t i = 0; i < n; ++i) y[i] += x[i];
}

/// LayerNorm over the last dimension (torch.nn.functional.layer_norm):
/// out(N,C) = (in - mean) * rstd * w + b, mean(N) and rstd(N) = 1/sqrt(var + eps) saved for backward.
template <class T>
void layernorm_forward(const Reference&, T* out, T* mean, T* rstd, const T* in, const T* w, const T* b, int N, int C,
                       T eps) {
    for (int n = 0; n < N; ++n) {
        const T* x = in + std::int64_t(n) * C;
        T m = 0;
        for (int c = 0; c < C; ++c) m += x[c];
        m /= T(C);
        T v = 0;
        for (int c = 0; c < C; ++c) v += (x[c] - m) * (x[c] - m);
        v /= T(C);
        const T s = T(1) / std::sqrt(v + eps);
        for (int c = 0; c < C; ++c) out[std::int64_t(n) * C + c] = (x[c] - m) * s * w[c] + b[c];
        mean[n] = m;
        rstd[n] = s;
    }
}

/// LayerNorm backward. Accumulates: din(N,C) +=, dw(C) +=, db(C) +=.
/// With xhat = (x - mean) rstd and g = dout * w:  din = rstd (g - mean_c(g) - xhat mean_c(g xhat)).
template <class T>
void layernorm_backward(const Reference&, T* din, T* dw, T* db, const T* dout, const T* in, const T* w, const T* mean,
                        const T* rstd, int N, int C) {
    for (int n = 0; n < N; ++n) {
        const std::int64_t row = std::int64_t(n) * C;
        T g_mean = 0, gx_mean = 0;
        for (int c = 0; c < C; ++c) {
            const T xhat = (in[row + c] - mean[n]) * rstd[n];
            const T g = dout[row + c] * w[c];
            g_mean += g;
            gx_mean += g * xhat;
            dw[c] += dout[row + c] * xhat;
            db[c] += dout[row + c];
        }
        g_mean /= T(C);
        gx_mean /= T(C);
        for (int c = 0; c < C; ++c) {
            const T xhat = (in[row + c] - mean[n]) * rstd[n];
            const T g = dout[row + c] * w[c];
            din[row + c] += rstd[n] * (g - g_mean - xhat * gx_mean);
        }
    }
}

/// out = gelu_tanh(in), n elements (torch.nn.functional.gelu(approximate='tanh')).
template <class T>
void gelu_forward(const Reference&, T* out, const T* in, std::int64_t n) {
    for (std::int64_t i = 0; i < n; ++i) out[i] = math::gelu(in[i]);
}

/// din = dout * gelu_tanh'(in), n elements (overwrites din).
template <class T>
void gelu_backward(const Reference&, T* din, const T* in, const T* dout, std::int64_t n) {
    for (std::int64_t i = 0; i < n; ++i) din[i] = dout[i] * math::gelu_grad(in[i]);
}

/// RMSNorm over the last dimension (transformers' LlamaRMSNorm):
/// out(N,C) = in * rstd * w, rstd(N) = 1/sqrt(mean_c(in^2) + eps) saved for backward.
template <class T>
void rmsnorm_forward(const Reference&, T* out, T* rstd, const T* in, const T* w, int N, int C, T eps) {
    for (int n = 0; n < N; ++n) {
        const T* x = in + std::int64_t(n) * C;
        T ms = 0;
        for (int c = 0; c < C; ++c) ms += x[c] * x[c];
        const T s = T(1) / std::sqrt(ms / T(C) + eps);
        for (int c = 0; c < C; ++c) out[std::int64_t(n) * C + c] = x[c] * s * w[c];
        rstd[n] = s;
    }
}

/// RMSNorm backward. Accumulates din(N,C) += and dw(C) +=. With xhat = x rstd and g = dout * w:
/// din = rstd (g - xhat mean_c(g xhat)).
template <class T>
void rmsnorm_backward(const Reference&, T* din, T* dw, const T* dout, const T* in, const T* w, const T* rstd, int N,
                      int C) {
    for (int n = 0; n < N; ++n) {
        const std::int64_t row = std::int64_t(n) * C;
        T gx_mean = 0;
        for (int c = 0; c < C; ++c) {
            const T xhat = in[row + c] * rstd[n];
            gx_mean += dout[row + c] * w[c] * xhat;
            dw[c] += dout[row + c] * xhat;
        }
        gx_mean /= T(C);
        for (int c = 0; c < C; ++c) din[row + c] += rstd[n] * (dout[row + c] * w[c] - in[row + c] * rstd[n] * gx_mean);
    }
}

/// SwiGLU (Llama's MLP activation): out(N,F) = silu(gate) * up, in(N,2F) = gate | up per row.
template <class T>
void swiglu_forward(const Reference&, T* out, const T* in, int N, int F) {
    for (int n = 0; n < N; ++n)
        for (int f = 0; f < F; ++f) {
            const T* row = in + std::int64_t(n) * 2 * F;
            out[std::int64_t(n) * F + f] = math::silu(row[f]) * row[F + f];
        }
}

/// SwiGLU backward: din(N,2F) = dout * up * silu'(gate) | dout * silu(gate) (overwrites din).
template <class T>
void swiglu_backward(const Reference&, T* din, const T* in, const T* dout, int N, int F) {
    for (int n = 0; n < N; ++n)
        for (int f = 0; f < F; ++f) {
            const std::int64_t r = std::int64_t(n) * 2 * F;
            const T g = in[r + f], u = in[r + F + f], d = dout[std::int64_t(n) * F + f];
            din[r + f] = d * u * math::silu_grad(g);
            din[r + F + f] = d * math::silu(g);
        }
}

/// Rotary position embedding in place (transformers' apply_rotary_pos_emb, rotate-half pairing):
/// in each of the first `heads` heads (hs wide) of every row of x(N, row), the pair (i, i + hs/2) is
/// rotated by the angle of position positions[n] and frequency i: x1' = x1 cos - x2 sin,
/// x2' = x2 cos + x1 sin, with cos/sin(P, hs/2) tables. `inverse` rotates back by the same angle,
/// which is the backward (a rotation's transpose).
template <class T>
void rope_rotate(const Reference&, T* x, const T* cos, const T* sin, const std::int32_t* positions, int N, int row,
                 int heads, int hs, bool inverse) {
    const int half = hs / 2;
    for (int n = 0; n < N; ++n)
        for (int h = 0; h < heads; ++h) {
            T* v = x + std::int64_t(n) * row + std::int64_t(h) * hs;
            const T* c = cos + std::int64_t(positions[n]) * half;
            const T* s = sin + std::int64_t(positions[n]) * half;
            for (int i = 0; i < half; ++i) {
                const T x1 = v[i], x2 = v[i + half], si = inverse ? -s[i] : s[i];
                v[i] = x1 * c[i] - x2 * si;
                v[i + half] = x2 * c[i] + x1 * si;
            }
        }
}

/// In place on att(BH,T,T): row t becomes softmax(scale * att[t, 0..t]) with zeros after t
/// (causal masking, torch.softmax(masked_fill(scores*scale, triu, -inf))).
template <class T>
void causal_softmax_forward(const Reference&, T* att, int BH, int Tn, T scale) {
    for (int bh = 0; bh < BH; ++bh)
        for (int t = 0; t < Tn; ++t) {
            T* row = att + (std::int64_t(bh) * Tn + t) * Tn;
            T mx = -std::numeric_limits<T>::infinity();  // the raw maximum: (x - max)·scale keeps the low bits
            for (int j = 0; j <= t; ++j) mx = std::max(mx, row[j]);
            T sum = 0;
            for (int j = 0; j <= t; ++j) {
                row[j] = std::exp((row[j] - mx) * scale);
                sum += row[j];
            }
            for (int j = 0; j <= t; ++j) row[j] /= sum;
            for (int j = t + 1; j < Tn; ++j) row[j] = 0;
        }
}

/// Softmax backward through the scaled causal softmax: dscores(BH,T,T) from att (probabilities) and
/// datt: dscores[t,j] = scale * p[t,j] (datt[t,j] - sum_k p[t,k] datt[t,k]) for j <= t, else 0.
/// dscores may alias datt.
template <class T>
void causal_softmax_backward(const Reference&, T* dscores, const T* att, const T* datt, int BH, int Tn, T scale) {
    for (int bh = 0; bh < BH; ++bh)
        for (int t = 0; t < Tn; ++t) {
            const std::int64_t row = (std::int64_t(bh) * Tn + t) * Tn;
            T dot = 0;
            for (int j = 0; j <= t; ++j) dot += att[row + j] * datt[row + j];
            for (int j = 0; j <= t; ++j) dscores[row + j] = scale * att[row + j] * (datt[row + j] - dot);
            for (int j = t + 1; j < Tn; ++j) dscores[row + j] = 0;
        }
}

/// out(B,T,C) = wte[tokens[b,t]] + wpe[t] (token plus learned position embedding; wpe null: the
/// token embedding alone, for rotary models).
template <class T>
void embedding_forward(const Reference&, T* out, const std::int32_t* tokens, const T* wte, const T* wpe, int B, int Tn,
                       int C) {
    for (int b = 0; b < B; ++b)
        for (int t = 0; t < Tn; ++t) {
            const std::int64_t bt = std::int64_t(b) * Tn + t;
            for (int c = 0; c < C; ++c)
                out[bt * C + c] = wte[std::int64_t(tokens[bt]) * C + c] + (wpe ? wpe[std::int64_t(t) * C + c] : T(0));
        }
}

/// Accumulates dwte(V,C) and dwpe(T,C) (skipped when null) from dout(B,T,C).
template <class T>
void embedding_backward(const Reference&, T* dwte, T* dwpe, const T* dout, const std::int32_t* tokens, int B, int Tn,
                        int C) {
    for (int b = 0; b < B; ++b)
        for (int t = 0; t < Tn; ++t) {
            const std::int64_t bt = std::int64_t(b) * Tn + t;
            for (int c = 0; c < C; ++c) {
                dwte[std::int64_t(tokens[bt]) * C + c] += dout[bt * C + c];
                if (dwpe) dwpe[std::int64_t(t) * C + c] += dout[bt * C + c];
            }
        }
}

/// Cross-entropy with ignore_index -1 (torch.nn.functional.cross_entropy), fused with its gradient.
/// For each of the N rows of logits(N,V) whose target >= 0: losses[n] = logsumexp(row) - row[target],
/// dlogits[n] = (softmax(row) - onehot(target)) * dloss; ignored rows get loss 0 and zero gradient.
/// The log-probabilities are (x - max) - log(sum) (math::log_softmax_entry), never x - lse with lse
/// rounded near the largest logit.
/// Returns the number of rows that count. dlogits may alias logits.
template <class T>
int cross_entropy_forward_backward(const Reference&, T* dlogits, T* losses, const T* logits,
                                   const std::int32_t* targets, int N, int V, T dloss) {
    int count = 0;
    for (int n = 0; n < N; ++n) {
        const T* row = logits + std::int64_t(n) * V;
        T* drow = dlogits + std::int64_t(n) * V;
        if (targets[n] < 0) {
            losses[n] = 0;
            for (int v = 0; v < V; ++v) drow[v] = 0;
            continue;
        }
        ++count;
        T mx = -std::numeric_limits<T>::infinity();
        for (int v = 0; v < V; ++v) mx = std::max(mx, row[v]);
        T sum = 0;
        for (int v = 0; v < V; ++v) sum += std::exp(row[v] - mx);
        const T log_sum = std::log(sum);
        losses[n] = -math::log_softmax_entry(row[targets[n]], mx, T(1), log_sum);
        for (int v = 0; v < V; ++v)
            drow[v] = (std::exp(math::log_softmax_entry(row[v], mx, T(1), log_sum)) - (v == targets[n] ? T(1) : T(0))) *
                      dloss;
    }
    return count;
}

/// One decoding step of causal attention against a KV cache. For each sequence b and query head h
/// (key/value head h / (H/Hkv), grouped-query attention), with n = lengths[b] cached positions (the
/// new token's key and value already written at n-1):
/// p = softmax(q_bh · K[0..n)^T / sqrt(hs)),  out(B,H*hs)[b, h*hs..] = p · V[0..n).
/// q is read from qkv(B,(H+2Hkv)hs); kcache/vcache are (max_batch, Hkv, Tmax, hs); scratch holds B*H*Tmax.
template <class T>
void attention_decode(const Reference&, T* out, T* scratch, const T* qkv, const T* kcache, const T* vcache,
                      const int* lengths, int B, int H, int Hkv, int hs, int Tmax) {
    const int C = H * hs, row = (H + 2 * Hkv) * hs;
    const T scale = T(1) / std::sqrt(T(hs));
    for (int b = 0; b < B; ++b)
        for (int h = 0; h < H; ++h) {
            const int n = lengths[b];
            const T* q = qkv + std::int64_t(b) * row + h * hs;
            const std::int64_t base = (std::int64_t(b) * Hkv + h / (H / Hkv)) * Tmax * hs;
            T* p = scratch + (std::int64_t(b) * H + h) * Tmax;
            T mx = -std::numeric_limits<T>::infinity();
            for (int j = 0; j < n; ++j) {
                T s = 0;
                for (int d = 0; d < hs; ++d) s += q[d] * kcache[base + std::int64_t(j) * hs + d];
                p[j] = s;
                mx = std::max(mx, p[j]);
            }
            T sum = 0;
            for (int j = 0; j < n; ++j) {
                p[j] = std::exp((p[j] - mx) * scale);
                sum += p[j];
            }
            T* o = out + std::int64_t(b) * C + h * hs;
            for (int d = 0; d < hs; ++d) o[d] = 0;
            for (int j = 0; j < n; ++j)
                for (int d = 0; d < hs; ++d) o[d] += p[j] / sum * vcache[base + std::int64_t(j) * hs + d];
        }
}

/// Writes the keys and values of `count` tokens into a KV cache (max_batch, Hkv, Tmax, hs) per
/// tensor: token i is row rows[3i] of qkv(·, (H+2Hkv)hs) (q H·hs | k Hkv·hs | v Hkv·hs), stored at
/// sequence rows[3i+1], position rows[3i+2] (torch: cache[b, :, t] = k.view(Hkv, hs)). Copies, so
/// every host device runs this one.
template <class T>
void kv_cache_store(const HostMemory&, T* keys, T* values, const T* qkv, const std::int32_t* rows, int count, int H,
                    int Hkv, int hs, int Tmax) {
    const int Ckv = Hkv * hs, Cq = H * hs;
    for (int i = 0; i < count; ++i) {
        const T* src = qkv + std::int64_t(rows[3 * i]) * (Cq + 2 * Ckv);
        const int b = rows[3 * i + 1], t = rows[3 * i + 2];
        for (int h = 0; h < Hkv; ++h) {
            const std::int64_t dst = ((std::int64_t(b) * Hkv + h) * Tmax + t) * hs;
            std::memcpy(keys + dst, src + Cq + h * hs, sizeof(T) * std::size_t(hs));
            std::memcpy(values + dst, src + Cq + Ckv + h * hs, sizeof(T) * std::size_t(hs));
        }
    }
}

}  // namespace distill::device
