// Runs CUDA kernels written against csrc/cuda/warp_mma.cuh on a CPU, for tests without a GPU.
//
// One std::thread per CUDA thread; blocks run one after another, so a `__shared__` variable can be
// a function-local static. __syncthreads is a barrier of the block; warp collectives (mma.sync,
// ldmatrix, shuffles) gather every lane's operands in per-warp slots between two barriers of the
// warp and give each lane what the PTX ISA says it receives. The mma fragment layouts here are
// written from the ISA's tables independently of the kernels, which only see the functions.
// Products are summed in float in k order (the hardware's internal order and rounding differ
// within fp32 accumulation); tf32 operands are rounded as cvt.rna does.
#pragma once
#define CT_KERNELS_WARP_EMULATION 1

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdlib>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __restrict__ __restrict

struct EmuIdx {
  unsigned x = 0, y = 0, z = 0;
};
inline thread_local EmuIdx threadIdx;
inline thread_local EmuIdx blockIdx;
inline thread_local EmuIdx blockDim;
inline thread_local EmuIdx gridDim;

namespace emu {

struct Warp {
  std::barrier<> bar{32};
  float fa[32][8], fb[32][8];  // WMMA operands
  uint32_t a[32][4];
  uint32_t b[32][2];
  float d[32][4];
  uint64_t word[32];
  const void* ptr[32];
};

struct Block {
  explicit Block(int threads) : bar(threads) {
    for (int w = 0; w < threads / 32; ++w) warps.emplace_back(std::make_unique<Warp>());
  }
  std::barrier<> bar;
  std::vector<std::unique_ptr<Warp>> warps;
};

inline thread_local Block* block = nullptr;
inline Warp& warp() { return *block->warps[threadIdx.x / 32]; }
inline int lane() { return static_cast<int>(threadIdx.x & 31u); }

// Runs `body` (the kernel call) as grid x threads CUDA threads, one block at a time: `threads`
// workers take every block in turn, with a barrier between blocks (their static "shared" memory
// is then free again), so a launch starts its threads once.
inline void launch(unsigned grid, int threads, const std::function<void()>& body) {
  Block ctx(threads);
  std::vector<std::thread> pool;
  pool.reserve(threads);
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      threadIdx.x = static_cast<unsigned>(t);
      blockDim.x = static_cast<unsigned>(threads);
      gridDim.x = grid;
      block = &ctx;
      for (unsigned b = 0; b < grid; ++b) {
        blockIdx.x = b;
        body();
        ctx.bar.arrive_and_wait();
      }
    });
  for (auto& th : pool) th.join();
}

inline float bf16_to_float(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t float_to_bf16(float f) {  // round to nearest even (no NaN inputs here)
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float f16_to_float(uint16_t h) {
  _Float16 v;
  std::memcpy(&v, &h, 2);
  return static_cast<float>(v);
}
inline uint16_t float_to_f16(float f) {
  const _Float16 v = static_cast<_Float16>(f);
  uint16_t h;
  std::memcpy(&h, &v, 2);
  return h;
}

// kind 0 bf16, 1 fp16 (m16n8k16), 2 tf32 (m16n8k8)
template <int KIND>
void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  Warp& w = warp();
  const int l = lane();
  std::memcpy(w.a[l], a, sizeof(w.a[l]));
  std::memcpy(w.b[l], b, sizeof(w.b[l]));
  w.bar.arrive_and_wait();
  constexpr int K = KIND == 2 ? 8 : 16;
  float A[16][16] = {}, B[16][8] = {};
  auto half = [](uint32_t r, int hi) {
    const uint16_t h = static_cast<uint16_t>(hi ? r >> 16 : r & 0xffffu);
    return KIND == 0 ? bf16_to_float(h) : f16_to_float(h);
  };
  auto word = [](uint32_t r) {  // a tf32 operand: the tensor core ignores the low 13 bits
    r &= 0xffffe000u;
    float f;
    std::memcpy(&f, &r, 4);
    return f;
  };
  for (int L = 0; L < 32; ++L) {
    const int g = L >> 2, t = L & 3;
    const uint32_t* ra = w.a[L];
    const uint32_t* rb = w.b[L];
    if (KIND == 2) {  // ISA: a0 (g, t), a1 (g + 8, t), a2 (g, t + 4), a3 (g + 8, t + 4); b0 (t, g), b1 (t + 4, g)
      A[g][t] = word(ra[0]);
      A[g + 8][t] = word(ra[1]);
      A[g][t + 4] = word(ra[2]);
      A[g + 8][t + 4] = word(ra[3]);
      B[t][g] = word(rb[0]);
      B[t + 4][g] = word(rb[1]);
    } else {  // ISA: a0,a1 (g, 2t + i), a2,a3 (g + 8, 2t + i), a4,a5 (g, 2t + 8 + i), a6,a7 (g + 8, 2t + 8 + i)
      for (int i = 0; i < 2; ++i) {
        A[g][2 * t + i] = half(ra[0], i);
        A[g + 8][2 * t + i] = half(ra[1], i);
        A[g][2 * t + 8 + i] = half(ra[2], i);
        A[g + 8][2 * t + 8 + i] = half(ra[3], i);
        B[2 * t + i][g] = half(rb[0], i);  // b0,b1 (2t + i, g), b2,b3 (2t + 8 + i, g)
        B[2 * t + 8 + i][g] = half(rb[1], i);
      }
    }
  }
  const int g = l >> 2, t = l & 3;
  for (int e = 0; e < 4; ++e) {  // c0,c1 (g, 2t + i), c2,c3 (g + 8, 2t + i)
    const int row = g + 8 * (e >> 1), col = 2 * t + (e & 1);
    float s = 0.f;
    for (int k = 0; k < K; ++k) s += A[row][k] * B[k][col];
    d[e] += s;
  }
  w.bar.arrive_and_wait();
}

}  // namespace emu

inline void __syncthreads() { emu::block->bar.arrive_and_wait(); }
[[noreturn]] inline void __trap() { std::abort(); }

// ---- what csrc/cuda/supcon_kernels.h takes from cuda_runtime.h
using cudaError_t = int;
using cudaStream_t = void*;
constexpr cudaError_t cudaSuccess = 0, cudaErrorInvalidValue = 1;

// ---- scalar intrinsics and types of the WMMA / FMA kernels (csrc/cuda/supcon_tiles.cuh and the passes on it)
struct __nv_bfloat16 {
  uint16_t bits;
};
struct __half {
  uint16_t bits;
};
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return {emu::float_to_bf16(f)}; }
inline __half __float2half_rn(float f) { return {emu::float_to_f16(f)}; }
inline float emu_to_float(__nv_bfloat16 v) { return emu::bf16_to_float(v.bits); }
inline float emu_to_float(__half v) { return emu::f16_to_float(v.bits); }
inline float emu_to_float(float v) { return v; }

struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

template <typename To, typename From>
inline To emu_bit_cast(From v) {
  static_assert(sizeof(To) == sizeof(From), "same size");
  To r;
  std::memcpy(&r, &v, sizeof(To));
  return r;
}
inline float __int_as_float(int v) { return emu_bit_cast<float>(v); }
inline float __uint_as_float(unsigned v) { return emu_bit_cast<float>(v); }
inline unsigned __float_as_uint(float v) { return emu_bit_cast<unsigned>(v); }
inline double __longlong_as_double(long long v) { return emu_bit_cast<double>(v); }
inline long long __double_as_longlong(double v) { return emu_bit_cast<long long>(v); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline double __dmul_rn(double a, double b) { return a * b; }

inline int atomicAdd(int* addr, int v) { return std::atomic_ref<int>(*addr).fetch_add(v); }
inline int atomicOr(int* addr, int v) { return std::atomic_ref<int>(*addr).fetch_or(v); }
inline int atomicCAS(int* addr, int compare, int v) {
  std::atomic_ref<int>(*addr).compare_exchange_strong(compare, v);
  return compare;  // the old value, whether it was replaced or not
}
inline unsigned __umulhi(unsigned a, unsigned b) {
  return static_cast<unsigned>((static_cast<uint64_t>(a) * b) >> 32);
}

// ---- nvcuda::wmma, 16 x 16 x K tiles. The kernels only load, store, multiply and apply one
// function to every element of a fragment, so any assignment of elements to lanes is faithful:
// here lane l holds elements l * n .. l * n + n - 1 of the fragment's matrix in row-major order.
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
namespace precision {
struct tf32 {};
}
inline float __float_to_tf32(float x) {
  uint32_t u = emu_bit_cast<uint32_t>(x);  // cvt.rna.tf32.f32, as to_tf32 below
  if ((u & 0x7f800000u) != 0x7f800000u) u += 0x1000u;
  return emu_bit_cast<float>(u & 0xffffe000u);
}

template <typename Use, int M, int N, int K>
struct Shape;
template <int M, int N, int K>
struct Shape<matrix_a, M, N, K> {
  static constexpr int rows = M, cols = K;
};
template <int M, int N, int K>
struct Shape<matrix_b, M, N, K> {
  static constexpr int rows = K, cols = N;
};
template <int M, int N, int K>
struct Shape<accumulator, M, N, K> {
  static constexpr int rows = M, cols = N;
};
template <typename T>
struct Elem {
  using type = T;
};
template <>
struct Elem<precision::tf32> {
  using type = float;
};

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static constexpr int rows = Shape<Use, M, N, K>::rows, cols = Shape<Use, M, N, K>::cols;
  static constexpr int num_elements = rows * cols / 32;
  typename Elem<T>::type x[num_elements];
  // (row, col) of element e of this lane
  static int row_of(int e) { return (emu::lane() * num_elements + e) / cols; }
  static int col_of(int e) { return (emu::lane() * num_elements + e) % cols; }
};

template <typename Use, int M, int N, int K, typename T, typename L>
inline void fill_fragment(fragment<Use, M, N, K, T, L>& f, float v) {
  for (auto& x : f.x) x = v;
}
template <typename Use, int M, int N, int K, typename T, typename L, typename P>
inline void load_matrix_sync(fragment<Use, M, N, K, T, L>& f, const P* p, unsigned ldm) {
  using F = fragment<Use, M, N, K, T, L>;
  for (int e = 0; e < F::num_elements; ++e) {
    const int r = F::row_of(e), c = F::col_of(e);
    f.x[e] = std::is_same_v<L, col_major> ? p[c * ldm + r] : p[r * ldm + c];
  }
}
template <int M, int N, int K, typename T>
inline void load_matrix_sync(fragment<accumulator, M, N, K, T>& f, const float* p, unsigned ldm, layout_t l) {
  using F = fragment<accumulator, M, N, K, T>;
  for (int e = 0; e < F::num_elements; ++e) {
    const int r = F::row_of(e), c = F::col_of(e);
    f.x[e] = l == mem_col_major ? p[c * ldm + r] : p[r * ldm + c];
  }
}
template <int M, int N, int K, typename T>
inline void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, T>& f, unsigned ldm, layout_t l) {
  using F = fragment<accumulator, M, N, K, T>;
  for (int e = 0; e < F::num_elements; ++e) {
    const int r = F::row_of(e), c = F::col_of(e);
    (l == mem_col_major ? p[c * ldm + r] : p[r * ldm + c]) = f.x[e];
  }
}
// d = a b + c, collective: every lane's elements of a and b are gathered first
template <int M, int N, int K, typename T, typename LA, typename LB, typename TC>
inline void mma_sync(fragment<accumulator, M, N, K, TC>& d, const fragment<matrix_a, M, N, K, T, LA>& a,
                     const fragment<matrix_b, M, N, K, T, LB>& b, const fragment<accumulator, M, N, K, TC>& c) {
  emu::Warp& w = emu::warp();
  const int l = emu::lane();
  constexpr int NA = M * K / 32, NB = K * N / 32;
  static_assert(NA <= 8 && NB <= 8, "the warp's exchange slots hold 8 values a lane");
  for (int e = 0; e < NA; ++e) w.fa[l][e] = emu_to_float(a.x[e]);
  for (int e = 0; e < NB; ++e) w.fb[l][e] = emu_to_float(b.x[e]);
  w.bar.arrive_and_wait();
  float A[M][K], B[K][N];
  for (int L = 0; L < 32; ++L) {
    for (int e = 0; e < NA; ++e) A[(L * NA + e) / K][(L * NA + e) % K] = w.fa[L][e];
    for (int e = 0; e < NB; ++e) B[(L * NB + e) / N][(L * NB + e) % N] = w.fb[L][e];
  }
  using F = fragment<accumulator, M, N, K, TC>;
  float out[F::num_elements];
  for (int e = 0; e < F::num_elements; ++e) {
    const int r = F::row_of(e), col = F::col_of(e);
    float s = 0.f;
    for (int k = 0; k < K; ++k) s += A[r][k] * B[k][col];
    out[e] = c.x[e] + s;
  }
  for (int e = 0; e < F::num_elements; ++e) d.x[e] = out[e];
  w.bar.arrive_and_wait();
}
}  // namespace wmma
}  // namespace nvcuda

template <typename T>
T __shfl_xor_sync(unsigned, T v, int off) {
  static_assert(sizeof(T) <= 8, "one word per lane");
  emu::Warp& w = emu::warp();
  const int l = emu::lane();
  uint64_t x = 0;
  std::memcpy(&x, &v, sizeof(T));
  w.word[l] = x;
  w.bar.arrive_and_wait();
  T r;
  std::memcpy(&r, &w.word[l ^ off], sizeof(T));
  w.bar.arrive_and_wait();
  return r;
}

namespace ct_kernels {
namespace cuda {
namespace warp {

inline int lane_id() { return emu::lane(); }
inline void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) { emu::mma<0>(d, a, b); }
inline void mma_f16_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) { emu::mma<1>(d, a, b); }
inline void mma_tf32_1688(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) { emu::mma<2>(d, a, b); }

// ISA (.trans): lane (g, t) gets elements (2t, g) and (2t + 1, g) of matrix m, whose row r
// address came from lane 8 m + r.
inline void ldsm_x2_trans_check(const uint16_t* row_ptr);
inline void ldsm_x2_trans(uint32_t (&b)[2], const uint16_t* row_ptr) {
  ldsm_x2_trans_check(row_ptr);
  emu::Warp& w = emu::warp();
  const int l = emu::lane();
  w.ptr[l] = row_ptr;
  w.bar.arrive_and_wait();
  const int g = l >> 2, t = l & 3;
  for (int m = 0; m < 2; ++m) {
    const uint16_t lo = static_cast<const uint16_t*>(w.ptr[8 * m + 2 * t])[g];
    const uint16_t hi = static_cast<const uint16_t*>(w.ptr[8 * m + 2 * t + 1])[g];
    b[m] = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
  }
  w.bar.arrive_and_wait();
}

// Alignment the hardware requires (a misaligned address faults there, not here unless checked).
inline void require_aligned16(const void* p, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) {
    std::fprintf(stderr, "warp_emu: %s address %p is not 16-byte aligned\n", what, p);
    std::abort();
  }
}

// ISA: lanes 0-15 give the row addresses of the two 8 x 8 matrices, each row 16-byte aligned.
inline void ldsm_x2_trans_check(const uint16_t* row_ptr) {
  if (emu::lane() < 16) require_aligned16(row_ptr, "ldmatrix row");
}

// cp.async lands at some time before cp.async.wait_all returns: here the destination reads as NaN
// bytes from the issue until this thread's wait, when the copy happens, so a read that the kernel
// did not order after the wait (and a barrier) sees garbage, as it may on the hardware.
struct PendingCopy {
  void* smem;
  const void* gmem;
  bool full;
};
inline thread_local std::vector<PendingCopy> pending_copies;

inline void cp_async_16(void* smem, const void* gmem, bool full) {
  require_aligned16(smem, "cp.async shared");
  if (full) require_aligned16(gmem, "cp.async global");
  std::memset(smem, 0xff, 16);
  pending_copies.push_back({smem, gmem, full});
}
inline void cp_async_commit() {}
inline void cp_async_wait_all() {
  for (const PendingCopy& c : pending_copies) {
    if (c.full) std::memcpy(c.smem, c.gmem, 16);
    else std::memset(c.smem, 0, 16);
  }
  pending_copies.clear();
}

inline uint32_t to_tf32(float x) {  // cvt.rna.tf32.f32: nearest, ties away from zero, 10 mantissa bits
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7f800000u) != 0x7f800000u) u += 0x1000u;
  return u & 0xffffe000u;
}
inline float fast_exp2(float x) { return std::exp2(x); }
inline void opaque(uint32_t&) {}
inline uint32_t float_to_bits(float x) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  return b;
}
inline float bits_to_float(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}
inline uint32_t pack_bf16x2(float lo, float hi) {
  return static_cast<uint32_t>(emu::float_to_bf16(lo)) | (static_cast<uint32_t>(emu::float_to_bf16(hi)) << 16);
}
inline uint32_t pack_f16x2(float lo, float hi) {
  return static_cast<uint32_t>(emu::float_to_f16(lo)) | (static_cast<uint32_t>(emu::float_to_f16(hi)) << 16);
}

}  // namespace warp
}  // namespace cuda
}  // namespace ct_kernels
