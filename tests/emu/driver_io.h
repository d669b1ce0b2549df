// Input layout shared by the emulator drivers: int64 head[9] (kind, variant, M, D, lo, hi, ignore,
// then two fields of the driver's own), double inv_temp, int64 labels[M], U as M * D elements of
// esize(kind) bytes, then the driver's grad_rows.
#pragma once
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace emu_io {

template <typename T>
inline void read_into(FILE* f, T* dst, size_t n) {
  if (std::fread(dst, sizeof(T), n, f) != n) {
    std::fprintf(stderr, "short input\n");
    std::exit(2);
  }
}

struct Input {
  int64_t head[9];
  double inv_temp;
  std::vector<int64_t> labels;
  std::vector<unsigned char> u;  // 16 bytes of slack past the end, as a padded device buffer has
};

// The head fields every driver reads; a driver's Args derives from it and adds head[7], head[8].
struct Common {
  int64_t kind, variant, M, D, lo, hi, ignore;
  double inv_temp;
};

inline Common common_of(const Input& in) {
  const int64_t* h = in.head;
  return {h[0], h[1], h[2], h[3], h[4], h[5], h[6], in.inv_temp};
}

// Reads everything before grad_rows from argv[1]; opens argv[2] for the output.
template <typename ElementSize>
inline Input read_input(int argc, char** argv, ElementSize esize, FILE** in, FILE** out) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s input output\n", argv[0]);
    std::exit(2);
  }
  *in = std::fopen(argv[1], "rb");
  *out = std::fopen(argv[2], "wb");
  if (!*in || !*out) std::exit(2);
  Input r;
  read_into(*in, r.head, 9);
  read_into(*in, &r.inv_temp, 1);
  const int64_t M = r.head[2], D = r.head[3];
  r.labels.resize(M);
  read_into(*in, r.labels.data(), r.labels.size());
  const size_t bytes = static_cast<size_t>(M * D) * esize(r.head[0]);
  r.u.resize(bytes + 16);
  read_into(*in, r.u.data(), bytes);
  return r;
}

}  // namespace emu_io
