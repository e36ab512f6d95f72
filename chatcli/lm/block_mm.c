/* chatcli's matrix products over GGUF's 5- to 8-bit block formats, read as stored.

   y[m, n] = sum_k x[m, k] * W[n, k] where each row of W is a GGUF tensor row: blocks of
   Q8_0, Q5_0, Q5_1 (32 weights) or Q5_K, Q6_K (256 weights), exactly as in the file.
   Each block is dequantized in registers to float32 -- the same float32 values gguf's
   own dequantization gives (every product below is exact in float32: an fp16 scale has
   11 significant bits, a code at most 8, a 6-bit sub-scale 6) -- and multiplied with
   float32 activations by fused multiply-adds (a decode step's Q5_K and Q6_K: bfloat16
   activations in AVX512-BF16 dot products, below). Rows are shared out among OpenMP
   threads (the process's one OpenMP runtime, torch's).

   Built by chatcli.lm.block_kernels with -march=native; AVX-512F is required (the
   module falls back to torch's int4 kernel without it). Knows nothing about torch. */
#include <stdint.h>
#include <stdlib.h>
#include <immintrin.h>

#ifndef __AVX512F__
#error "chatcli's block kernels need AVX-512F"
#endif

#define ALWAYS static inline __attribute__((always_inline))

ALWAYS __m512 half_scale(const uint8_t* p) { return _mm512_set1_ps(_cvtsh_ss(*(const uint16_t*)p)); }
ALWAYS __m512i u8x16(const uint8_t* p) { return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)p)); }
ALWAYS __m512i i8x16(const uint8_t* p) { return _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p)); }
ALWAYS uint32_t u32(const uint8_t* p) { uint32_t v; __builtin_memcpy(&v, p, 4); return v; }

/* Each dequantizer hands its 16-weight vectors to EMIT: stored to `out` (xv == NULL), or
   multiplied straight into `*acc` with the activations `xv` (no store and reload; the
   branch is resolved at compile time, every caller passing a constant). */
ALWAYS void sink(float* out, const float* xv, __m512* acc, int off, __m512 w) {
    if (xv) *acc = _mm512_fmadd_ps(w, _mm512_loadu_ps(xv + off), *acc);
    else _mm512_storeu_ps(out + off, w);
}
#define EMIT(off, w) sink(out, xv, acc, (off), (w))
#define DEQ_ARGS const uint8_t* b, float* out, const float* xv, __m512* acc

/* Q8_0: fp16 d, 32 int8 q; w = d * q */
ALWAYS void deq_q8_0(DEQ_ARGS) {
    __m512 d = half_scale(b);
    EMIT(0, _mm512_mul_ps(d, _mm512_cvtepi32_ps(i8x16(b + 2))));
    EMIT(16, _mm512_mul_ps(d, _mm512_cvtepi32_ps(i8x16(b + 18))));
}

/* Q5_0: fp16 d, 32 high bits, 16 bytes of nibbles; w = d * (q - 16). Q5_1: fp16 d,
   fp16 m, then the same; w = d * q + m. Element j < 16 is the low nibble of byte j,
   element j + 16 its high nibble; bit j of the 32 bits is element j's fifth bit. */
ALWAYS void deq_q5(DEQ_ARGS, int has_min) {
    __m512 d = half_scale(b);
    const uint8_t* p = b + (has_min ? 4 : 2);
    uint32_t qh = u32(p);
    __m512i q = u8x16(p + 4);
    __m512i lo = _mm512_and_si512(q, _mm512_set1_epi32(15));
    __m512i hi = _mm512_srli_epi32(q, 4);
    __m512i sixteen = _mm512_set1_epi32(16);
    lo = _mm512_mask_add_epi32(lo, (__mmask16)(qh & 0xFFFF), lo, sixteen);
    hi = _mm512_mask_add_epi32(hi, (__mmask16)(qh >> 16), hi, sixteen);
    if (has_min) {
        __m512 m = half_scale(b + 2);
        EMIT(0, _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(lo), m));
        EMIT(16, _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(hi), m));
    } else {
        EMIT(0, _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_sub_epi32(lo, sixteen))));
        EMIT(16, _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_sub_epi32(hi, sixteen))));
    }
}
ALWAYS void deq_q5_0(DEQ_ARGS) { deq_q5(b, out, xv, acc, 0); }
ALWAYS void deq_q5_1(DEQ_ARGS) { deq_q5(b, out, xv, acc, 1); }

/* Codes are made 64 at a time in byte lanes, then widened 16 at a time to float32. */
ALWAYS __m512i bytes_of(__m256i lo, __m256i hi) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}
ALWAYS __m512i nibble_lo(__m512i v) { return _mm512_and_si512(v, _mm512_set1_epi8(15)); }
ALWAYS __m512i nibble_hi(__m512i v) {
    return _mm512_and_si512(_mm512_srli_epi16(v, 4), _mm512_set1_epi8(15));
}
/* Widening reads the codes back from a small buffer: a load-and-extend per 16 is
   cheaper than extracting each quarter of a register. */
#define WIDEN_I8(v, k) _mm512_cvtepi32_ps(i8x16((const uint8_t*)(v) + 16 * (k)))
#define WIDEN_U8(v, k) _mm512_cvtepi32_ps(u8x16((const uint8_t*)(v) + 16 * (k)))

/* Q6_K (210 bytes): ql[128] low nibbles, qh[64] two high bits each, int8 scales[16] (one
   per 16 weights), fp16 d; w = (d * scale) * (q - 32). Layout as ggml's
   dequantize_row_q6_K: two halves of 128; in each, for l < 32, ql[l] and ql[l + 32]
   hold elements l, l + 32 (low nibbles) and l + 64, l + 96 (high nibbles), and qh[l]
   their fifth and sixth bits, two bits each in that order; element 16 j + i of a half
   has scale j of its eight. */
ALWAYS void deq_q6_k(DEQ_ARGS) {
    const uint8_t* ql = b;
    const uint8_t* qh = b + 128;
    const int8_t* sc = (const int8_t*)(b + 192);
    float d = _cvtsh_ss(*(const uint16_t*)(b + 208));
    __m512i three = _mm512_set1_epi8(3), c32 = _mm512_set1_epi8(32);
    for (int n = 0; n < 2; n++) {
        __m512i a = _mm512_loadu_si512(ql);
        __m256i h = _mm256_loadu_si256((const __m256i*)qh);
        __m512i h12 = bytes_of(h, _mm256_srli_epi16(h, 2));        /* bits of q1, q2 */
        __m512i h34 = _mm512_srli_epi16(h12, 4);                     /* bits of q3, q4 */
        uint8_t q12[64] __attribute__((aligned(64))), q34[64] __attribute__((aligned(64)));
        _mm512_store_si512(q12, _mm512_sub_epi8(_mm512_or_si512(nibble_lo(a),
                          _mm512_slli_epi16(_mm512_and_si512(h12, three), 4)), c32));
        _mm512_store_si512(q34, _mm512_sub_epi8(_mm512_or_si512(nibble_hi(a),
                          _mm512_slli_epi16(_mm512_and_si512(h34, three), 4)), c32));
        EMIT(0, _mm512_mul_ps(_mm512_set1_ps(d * sc[0]), WIDEN_I8(q12, 0)));
        EMIT(16, _mm512_mul_ps(_mm512_set1_ps(d * sc[1]), WIDEN_I8(q12, 1)));
        EMIT(32, _mm512_mul_ps(_mm512_set1_ps(d * sc[2]), WIDEN_I8(q12, 2)));
        EMIT(48, _mm512_mul_ps(_mm512_set1_ps(d * sc[3]), WIDEN_I8(q12, 3)));
        EMIT(64, _mm512_mul_ps(_mm512_set1_ps(d * sc[4]), WIDEN_I8(q34, 0)));
        EMIT(80, _mm512_mul_ps(_mm512_set1_ps(d * sc[5]), WIDEN_I8(q34, 1)));
        EMIT(96, _mm512_mul_ps(_mm512_set1_ps(d * sc[6]), WIDEN_I8(q34, 2)));
        EMIT(112, _mm512_mul_ps(_mm512_set1_ps(d * sc[7]), WIDEN_I8(q34, 3)));
        ql += 64; qh += 32; sc += 8;
        if (xv) xv += 128; else out += 128;
    }
}

/* Q5_K's 12 bytes of 6-bit scales and minimums, 8 of each */
ALWAYS void q5_k_scales(const uint8_t* s, uint8_t* sc, uint8_t* mn) {
    for (int j = 0; j < 4; j++) {
        sc[j] = s[j] & 63; mn[j] = s[j + 4] & 63;
        sc[j + 4] = (s[j + 8] & 15) | ((s[j] >> 6) << 4);
        mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
    }
}

/* Q5_K's codes (0..31) of sub-blocks 2i and 2i + 1, 64 bytes into `codes` */
ALWAYS void q5_k_codes(const uint8_t* qs, __m256i qh, int i, uint8_t* codes) {
    __m256i q = _mm256_loadu_si256((const __m256i*)(qs + 32 * i));
    __m512i lo_hi = nibble_lo(bytes_of(q, _mm256_srli_epi16(q, 4)));
    __m512i fifth = _mm512_and_si512(bytes_of(_mm256_srli_epi16(qh, 2 * i),
                                              _mm256_srli_epi16(qh, 2 * i + 1)),
                                     _mm512_set1_epi8(1));
    _mm512_store_si512(codes, _mm512_or_si512(lo_hi, _mm512_slli_epi16(fifth, 4)));
}

/* Q5_K (176 bytes): fp16 d, fp16 dmin, 12 bytes of 6-bit scales and minimums (8 each),
   qh[32], qs[128]; w = (d * sc_j) * q - (dmin * m_j) for sub-block j of 32. Sub-blocks
   2i and 2i + 1 take the low and high nibbles of qs[32 i .. 32 i + 31], and bit j of
   qh[l] is the fifth bit of element l of sub-block j. */
ALWAYS void deq_q5_k(DEQ_ARGS) {
    float d = _cvtsh_ss(*(const uint16_t*)b), dmin = _cvtsh_ss(*(const uint16_t*)(b + 2));
    const uint8_t* s = b + 4;
    __m256i qh = _mm256_loadu_si256((const __m256i*)(b + 16));
    const uint8_t* qs = b + 48;
    uint8_t sc[8], mn[8];
    q5_k_scales(s, sc, mn);
    _Pragma("GCC unroll 4")
    for (int i = 0; i < 4; i++) {
        uint8_t codes[64] __attribute__((aligned(64)));
        q5_k_codes(qs, qh, i, codes);
        __m512 s0 = _mm512_set1_ps(d * sc[2 * i]), m0 = _mm512_set1_ps(-(dmin * mn[2 * i]));
        __m512 s1 = _mm512_set1_ps(d * sc[2 * i + 1]), m1 = _mm512_set1_ps(-(dmin * mn[2 * i + 1]));
        EMIT(64 * i, _mm512_fmadd_ps(s0, WIDEN_U8(codes, 0), m0));
        EMIT(64 * i + 16, _mm512_fmadd_ps(s0, WIDEN_U8(codes, 1), m0));
        EMIT(64 * i + 32, _mm512_fmadd_ps(s1, WIDEN_U8(codes, 2), m1));
        EMIT(64 * i + 48, _mm512_fmadd_ps(s1, WIDEN_U8(codes, 3), m1));
    }
}

#define TILE 4 /* activation rows multiplied per pass over a weight row */
#define ROWS 4 /* weight rows multiplied per pass over an activation row */
/* In a decode step each weight row is read once, from memory: the rows of the next group
   (ROWS * rb bytes on) are prefetched as the current one is read (measured against a
   fixed 4 KiB ahead and none on Q8_0, Q5_0, Q5_K and Q6_K shapes streamed from memory:
   as good or better; none is up to 1.9x slower). */
#define PREFETCH(p) _mm_prefetch((const char*)(p), _MM_HINT_T0)
/* every cache line of one block of `bytes` at p (a block may span several lines) */
#define PREFETCH_BLOCK(p, bytes)                                                           \
    do { for (int off_ = 0; off_ < (bytes); off_ += 64) PREFETCH((p) + off_); } while (0)

/* One product kernel per format. Weight rows go to OpenMP threads ROWS at a time. Full
   tiles of TILE activation rows take one weight row at a time (each block dequantized
   once per tile); the activation rows left over (all of them in a decode step, M = 1)
   take ROWS weight rows at once, so that ROWS independent sums are in flight and each
   activation vector is loaded once for them. Accumulators stay in registers. */
#define BLOCK_MM(NAME, DEQ, ELEMS, BYTES)                                                  \
void NAME(const float* x, int64_t M, int64_t K, const uint8_t* w, int64_t N, float* y) { \
    int64_t nb = K / ELEMS, rb = nb * BYTES, groups = (N + ROWS - 1) / ROWS;               \
    int64_t tiled = M - M % TILE;                                                          \
    int64_t ahead = ROWS * rb;                                                             \
    _Pragma("omp parallel for schedule(static)")                                           \
    for (int64_t g = 0; g < groups; g++) {                                                 \
        float buf[ROWS][ELEMS] __attribute__((aligned(64)));                               \
        int64_t n0 = g * ROWS, count = N - n0 < ROWS ? N - n0 : ROWS;                      \
        for (int64_t n = n0; n < n0 + count; n++) {                                        \
            const uint8_t* row = w + n * rb;                                               \
            for (int64_t m0 = 0; m0 < tiled; m0 += TILE) {                                 \
                __m512 acc[TILE];                                                          \
                _Pragma("GCC unroll 4")                                                    \
                for (int i = 0; i < TILE; i++) acc[i] = _mm512_setzero_ps();               \
                for (int64_t b = 0; b < nb; b++) {                                         \
                    DEQ(row + b * BYTES, buf[0], NULL, NULL);                                          \
                    const float* xb = x + m0 * K + b * ELEMS;                              \
                    for (int j = 0; j < ELEMS; j += 16) {                                  \
                        __m512 wv = _mm512_load_ps(buf[0] + j);                            \
                        _Pragma("GCC unroll 4")                                            \
                        for (int i = 0; i < TILE; i++)                                     \
                            acc[i] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(xb + i * K + j), acc[i]); \
                    }                                                                      \
                }                                                                          \
                _Pragma("GCC unroll 4")                                                    \
                for (int i = 0; i < TILE; i++) y[(m0 + i) * N + n] = _mm512_reduce_add_ps(acc[i]); \
            }                                                                              \
        }                                                                                  \
        for (int64_t m = tiled; m < M; m++) {                                              \
            const float* xm = x + m * K;                                                   \
            if (count == ROWS) {                                                           \
                __m512 acc[ROWS];                                                          \
                _Pragma("GCC unroll 4")                                                    \
                for (int r = 0; r < ROWS; r++) acc[r] = _mm512_setzero_ps();               \
                for (int64_t b = 0; b < nb; b++) {                                         \
                    _Pragma("GCC unroll 4")                                                \
                    for (int r = 0; r < ROWS; r++) {                                       \
                        const uint8_t* at = w + (n0 + r) * rb + b * BYTES;                 \
                        PREFETCH_BLOCK(at + ahead, BYTES);                                 \
                        DEQ(at, NULL, xm + b * ELEMS, &acc[r]);                            \
                    }                                                                      \
                }                                                                          \
                _Pragma("GCC unroll 4")                                                    \
                for (int r = 0; r < ROWS; r++) y[m * N + n0 + r] = _mm512_reduce_add_ps(acc[r]); \
            } else {                                                                       \
                for (int64_t n = n0; n < n0 + count; n++) {                                \
                    __m512 acc = _mm512_setzero_ps();                                      \
                    for (int64_t b = 0; b < nb; b++) {                                     \
                        DEQ(w + n * rb + b * BYTES, NULL, xm + b * ELEMS, &acc);           \
                    }                                                                      \
                    y[m * N + n] = _mm512_reduce_add_ps(acc);                              \
                }                                                                          \
            }                                                                              \
        }                                                                                  \
    }                                                                                      \
}

BLOCK_MM(chatcli_q8_0_mm, deq_q8_0, 32, 34)
BLOCK_MM(chatcli_q5_0_mm, deq_q5_0, 32, 22)
BLOCK_MM(chatcli_q5_1_mm, deq_q5_1, 32, 24)
BLOCK_MM(chatcli_q5_k_mm, deq_q5_k, 256, 176)
BLOCK_MM(chatcli_q6_k_mm, deq_q6_k, 256, 210)

/* bfloat16 activations, one or a few rows (a decode step): Q6_K through AVX512-BF16 dot
   products, which multiply 32 weight-activation pairs per instruction where the float32
   path above spends three instructions per 16 (Q6_K's unpacking is compute-bound there).
   Each code q (0..63) becomes the bfloat16 number q - 32 (exact) by a table lookup; a
   32-wide dot product sums pairs of adjacent elements into 16 lanes, lanes 0-7 inside
   one 16-weight scale group and lanes 8-15 in the next, so the lanes are scaled by
   [s_2k x 8, s_2k+1 x 8] (a permutation of the block's 16 scales) and accumulated.
   Every product is exact, so the weights are the file's (a weight read back through an
   identity input is gguf's value); only the float32 summation order differs from the
   path above. */
int chatcli_has_bf16(void) {
#ifdef __AVX512BF16__
    return 1;
#else
    return 0;
#endif
}

#ifdef __AVX512BF16__
/* bfloat16 bits of i - 32, for i = 0..63 */
static const uint16_t Q6_BF16[64] __attribute__((aligned(64))) = {
    0xc200, 0xc1f8, 0xc1f0, 0xc1e8, 0xc1e0, 0xc1d8, 0xc1d0, 0xc1c8, 0xc1c0, 0xc1b8, 0xc1b0, 0xc1a8, 0xc1a0, 0xc198, 0xc190, 0xc188, 0xc180, 0xc170, 0xc160, 0xc150, 0xc140, 0xc130, 0xc120, 0xc110, 0xc100, 0xc0e0, 0xc0c0, 0xc0a0, 0xc080, 0xc040, 0xc000, 0xbf80,
    0x0000, 0x3f80, 0x4000, 0x4040, 0x4080, 0x40a0, 0x40c0, 0x40e0, 0x4100, 0x4110, 0x4120, 0x4130, 0x4140, 0x4150, 0x4160, 0x4170, 0x4180, 0x4188, 0x4190, 0x4198, 0x41a0, 0x41a8, 0x41b0, 0x41b8, 0x41c0, 0x41c8, 0x41d0, 0x41d8, 0x41e0, 0x41e8, 0x41f0, 0x41f8};

ALWAYS __m512 q6_k_scales(const uint8_t* b) {
    __m512 d = _mm512_set1_ps(_cvtsh_ss(*(const uint16_t*)(b + 208)));
    return _mm512_mul_ps(d, _mm512_cvtepi32_ps(i8x16(b + 192)));
}

/* one Q6_K block of one row, added to acc[0..3] (four sums in flight) */
ALWAYS void dot_q6_k_bf16(const uint8_t* b, const uint16_t* xb, __m512* acc) {
    const __m512i pair_of[8] = {
#define PAIR(k) _mm512_set_epi32(2*k+1, 2*k+1, 2*k+1, 2*k+1, 2*k+1, 2*k+1, 2*k+1, 2*k+1, \
                                 2*k, 2*k, 2*k, 2*k, 2*k, 2*k, 2*k, 2*k)
        PAIR(0), PAIR(1), PAIR(2), PAIR(3), PAIR(4), PAIR(5), PAIR(6), PAIR(7)
#undef PAIR
    };
    __m512i table_lo = _mm512_load_si512(Q6_BF16), table_hi = _mm512_load_si512(Q6_BF16 + 32);
    __m512 s = q6_k_scales(b);
    const uint8_t* ql = b;
    const uint8_t* qh = b + 128;
    __m512i three = _mm512_set1_epi8(3);
    uint8_t codes[256] __attribute__((aligned(64)));
    for (int n = 0; n < 2; n++) {
        __m512i a = _mm512_loadu_si512(ql + 64 * n);
        __m256i h = _mm256_loadu_si256((const __m256i*)(qh + 32 * n));
        __m512i h12 = bytes_of(h, _mm256_srli_epi16(h, 2));
        __m512i h34 = _mm512_srli_epi16(h12, 4);
        _mm512_store_si512(codes + 128 * n, _mm512_or_si512(nibble_lo(a),
                           _mm512_slli_epi16(_mm512_and_si512(h12, three), 4)));
        _mm512_store_si512(codes + 128 * n + 64, _mm512_or_si512(nibble_hi(a),
                           _mm512_slli_epi16(_mm512_and_si512(h34, three), 4)));
    }
    _Pragma("GCC unroll 8")
    for (int k = 0; k < 8; k++) {
        __m512i idx = _mm512_cvtepu8_epi16(_mm256_load_si256((const __m256i*)(codes + 32 * k)));
        __m512i q = _mm512_permutex2var_epi16(table_lo, idx, table_hi);
        __m512 t = _mm512_dpbf16_ps(_mm512_setzero_ps(), (__m512bh)q,
                                    (__m512bh)_mm512_loadu_si512(xb + 32 * k));
        acc[k % 4] = _mm512_fmadd_ps(t, _mm512_permutexvar_ps(pair_of[k], s), acc[k % 4]);
    }
}

void chatcli_q6_k_mm_bf16(const uint16_t* x, int64_t M, int64_t K, const uint8_t* w,
                          int64_t N, float* y) {
    int64_t nb = K / 256, rb = nb * 210, groups = (N + ROWS - 1) / ROWS;
    _Pragma("omp parallel for schedule(static)")
    for (int64_t g = 0; g < groups; g++) {
        int64_t n0 = g * ROWS, count = N - n0 < ROWS ? N - n0 : ROWS;
        for (int64_t m = 0; m < M; m++) {
            const uint16_t* xm = x + m * K;
            for (int64_t n = n0; n < n0 + count; n++) {
                __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(),
                                 _mm512_setzero_ps(), _mm512_setzero_ps()};
                const uint8_t* row = w + n * rb;
                for (int64_t b = 0; b < nb; b++) {
                    PREFETCH_BLOCK(row + b * 210 + ROWS * rb, 210);
                    dot_q6_k_bf16(row + b * 210, xm + 256 * b, acc);
                }
                y[m * N + n] = _mm512_reduce_add_ps(_mm512_add_ps(
                    _mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
            }
        }
    }
}

/* Q5_K the same way: a 32-weight sub-block j has one scale d * sc_j and one minimum
   dmin * m_j, so w . x = (d * sc_j) (q . x) - (dmin * m_j) X_j, with q . x one dot
   product of the codes (0..31, made bfloat16 by a table) and X_j the activations' sum
   over the sub-block (once per activation row, shared by every weight row). Read back
   through an identity row, each term is exact and the difference rounds once, as
   gguf's float32 d * sc * q - dmin * m does. */
static const uint16_t Q5_BF16[32] __attribute__((aligned(64))) = {
    0x0000, 0x3f80, 0x4000, 0x4040, 0x4080, 0x40a0, 0x40c0, 0x40e0, 0x4100, 0x4110, 0x4120, 0x4130, 0x4140, 0x4150, 0x4160, 0x4170, 0x4180, 0x4188, 0x4190, 0x4198, 0x41a0, 0x41a8, 0x41b0, 0x41b8, 0x41c0, 0x41c8, 0x41d0, 0x41d8, 0x41e0, 0x41e8, 0x41f0, 0x41f8};

/* one Q5_K block of one row: adds the scaled dot products to acc[0..1], the minimums'
   share to *corr (eight sub-blocks in its low lanes) */
ALWAYS void dot_q5_k_bf16(const uint8_t* b, const uint16_t* xb, const float* sums,
                          __m512* acc, __m256* corr) {
    float d = _cvtsh_ss(*(const uint16_t*)b), dmin = _cvtsh_ss(*(const uint16_t*)(b + 2));
    const uint8_t* s = b + 4;
    __m256i qh = _mm256_loadu_si256((const __m256i*)(b + 16));
    const uint8_t* qs = b + 48;
    uint8_t sc[8], mn[8] __attribute__((aligned(8)));
    q5_k_scales(s, sc, mn);
    __m256 mins = _mm256_mul_ps(_mm256_set1_ps(dmin), _mm256_cvtepi32_ps(
        _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)mn))));
    *corr = _mm256_fmadd_ps(mins, _mm256_loadu_ps(sums), *corr);
    __m512i table = _mm512_load_si512(Q5_BF16);
    uint8_t codes[64] __attribute__((aligned(64)));
    _Pragma("GCC unroll 4")
    for (int i = 0; i < 4; i++) {
        q5_k_codes(qs, qh, i, codes);
        _Pragma("GCC unroll 2")
        for (int h = 0; h < 2; h++) {
            int j = 2 * i + h;
            __m512i w = _mm512_permutexvar_epi16(_mm512_cvtepu8_epi16(
                _mm256_load_si256((const __m256i*)(codes + 32 * h))), table);
            __m512 t = _mm512_dpbf16_ps(_mm512_setzero_ps(), (__m512bh)w,
                                        (__m512bh)_mm512_loadu_si512(xb + 32 * j));
            acc[h] = _mm512_fmadd_ps(t, _mm512_set1_ps(d * sc[j]), acc[h]);
        }
    }
}

void chatcli_q5_k_mm_bf16(const uint16_t* x, int64_t M, int64_t K, const uint8_t* w,
                          int64_t N, float* y) {
    int64_t nb = K / 256, rb = nb * 176, groups = (N + ROWS - 1) / ROWS, subs = K / 32;
    float* sums = (float*)malloc(sizeof(float) * (size_t)(M * subs + 8));
    if (!sums) return;
    for (int64_t m = 0; m < M; m++)  /* each sub-block's activation sum, in float32 */
        for (int64_t j = 0; j < subs; j++) {
            float total = 0;
            for (int i = 0; i < 32; i++) {
                uint32_t bits = (uint32_t)x[m * K + 32 * j + i] << 16;
                float v;
                __builtin_memcpy(&v, &bits, 4);
                total += v;
            }
            sums[m * subs + j] = total;
        }
    _Pragma("omp parallel for schedule(static)")
    for (int64_t g = 0; g < groups; g++) {
        int64_t n0 = g * ROWS, count = N - n0 < ROWS ? N - n0 : ROWS;
        for (int64_t m = 0; m < M; m++) {
            const uint16_t* xm = x + m * K;
            for (int64_t n = n0; n < n0 + count; n++) {
                __m512 acc[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
                __m256 corr = _mm256_setzero_ps();
                const uint8_t* row = w + n * rb;
                for (int64_t b = 0; b < nb; b++) {
                    PREFETCH_BLOCK(row + b * 176 + ROWS * rb, 176);
                    dot_q5_k_bf16(row + b * 176, xm + 256 * b, sums + m * subs + 8 * b,
                                  acc, &corr);
                }
                __m256 c2 = _mm256_add_ps(corr, _mm256_permute2f128_ps(corr, corr, 1));
                __m128 c = _mm256_castps256_ps128(c2);
                c = _mm_add_ps(c, _mm_movehl_ps(c, c));
                c = _mm_add_ss(c, _mm_movehdup_ps(c));
                y[m * N + n] = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]))
                               - _mm_cvtss_f32(c);
            }
        }
    }
    free(sums);
}
#endif
