// Runs dinoedge's CUDA kernels on the CPU, for tests on machines without a GPU: each CUDA
// thread of a block is a fiber (ucontext), __syncthreads and warp shuffles are barriers
// between fibers, and blocks run one after another. Slow, single-threaded and exact about
// barrier semantics: a barrier some threads never reach is reported as a deadlock.
//
// Beyond plain CUDA C it provides what the kernels use of the hardware: dynamic shared
// memory (DYNAMIC_SHARED), __shfl_sync / __shfl_xor_sync, __trap, and the tensor-core
// instructions the attention kernel issues as inline PTX (mma.sync.m16n8k16 with f16 / bf16
// inputs and f32 accumulation, cvt.rn to f16 / bf16), implemented on fragments from the PTX
// ISA's register layout. Kernels select these with `#ifdef DINOEDGE_EMU`.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>
#include <ucontext.h>

#define DINOEDGE_EMU 1
// The emulator runs the sm_80 forms (tensor-core attention included).
#define __CUDA_ARCH__ 800

struct emu_dim3 { unsigned x, y, z; };
static emu_dim3 threadIdx, blockIdx, blockDim, gridDim;

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __restrict__
using std::max;
using std::min;

inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }

namespace emu {
enum State { RUNNABLE, AT_BLOCK, AT_WARP, DONE };
struct Fiber { ucontext_t ctx; State state; };
static ucontext_t main_ctx;
static std::vector<Fiber> fibers;
static std::vector<std::vector<char>> stacks;
static unsigned cur;
static void (*body)(void **);
static void **body_args;
static float shfl[1024];
// mma.sync operands of every lane of the block: A (4 registers), B (2), the type.
static unsigned mma_a[1024][4], mma_b[1024][2];
static std::vector<unsigned char> dyn_shared;
static bool trapped;
const size_t STACK = 128 << 10;

static void yield(State s) {
    fibers[cur].state = s;
    swapcontext(&fibers[cur].ctx, &main_ctx);
}

static void entry() {
    body(body_args);
    fibers[cur].state = DONE;
}

// Runs one block; returns false on a deadlock (a barrier not every live thread reaches).
static bool run_block(unsigned nt) {
    if (stacks.size() < nt) stacks.resize(nt);
    fibers.assign(nt, Fiber{});
    for (unsigned t = 0; t < nt; t++) {
        stacks[t].resize(STACK);
        getcontext(&fibers[t].ctx);
        fibers[t].ctx.uc_stack.ss_sp = stacks[t].data();
        fibers[t].ctx.uc_stack.ss_size = STACK;
        fibers[t].ctx.uc_link = &main_ctx;
        makecontext(&fibers[t].ctx, entry, 0);
        fibers[t].state = RUNNABLE;
    }
    for (;;) {
        for (unsigned t = 0; t < nt; t++) {
            if (fibers[t].state != RUNNABLE) continue;
            cur = t;
            threadIdx = {t, 0, 0};
            swapcontext(&main_ctx, &fibers[t].ctx);
        }
        bool all_done = true, released = false;
        for (auto &f : fibers) all_done = all_done && f.state == DONE;
        if (all_done) return true;
        for (unsigned w = 0; w * 32 < nt; w++) {
            bool live = false, ready = true;
            for (unsigned t = w * 32; t < std::min(nt, w * 32 + 32); t++) {
                if (fibers[t].state == DONE) continue;
                live = true;
                ready = ready && fibers[t].state == AT_WARP;
            }
            if (live && ready) {
                for (unsigned t = w * 32; t < std::min(nt, w * 32 + 32); t++)
                    if (fibers[t].state == AT_WARP) fibers[t].state = RUNNABLE;
                released = true;
            }
        }
        if (!released) {
            bool ready = true;
            for (auto &f : fibers) ready = ready && (f.state == DONE || f.state == AT_BLOCK);
            if (!ready) return false;
            for (auto &f : fibers)
                if (f.state == AT_BLOCK) f.state = RUNNABLE;
        }
    }
}

template <typename T> using arg_t = std::remove_cv_t<std::remove_reference_t<T>>;

template <typename... A, size_t... I>
void call(void (*f)(A...), void **a, std::index_sequence<I...>) {
    f(*static_cast<arg_t<A> *>(a[I])...);
}

template <typename... A> void call(void (*f)(A...), void **a) {
    call(f, a, std::index_sequence_for<A...>{});
}

// IEEE f16 and bf16 bits to f32.
inline float f16_to_f32(unsigned short h) {
    unsigned sign = (h & 0x8000u) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff, u;
    if (e == 0x1f) u = sign | 0x7f800000u | (m << 13);
    else if (e != 0) u = sign | ((e + 112) << 23) | (m << 13);
    else if (m == 0) u = sign;
    else {  // subnormal: normalise
        int s = 0;
        while (!(m & 0x400)) { m <<= 1; s++; }
        u = sign | ((unsigned)(113 - s) << 23) | ((m & 0x3ff) << 13);
    }
    return __uint_as_float(u);
}
inline float bf16_to_f32(unsigned short h) { return __uint_as_float((unsigned)h << 16); }
inline float half_to_f32(unsigned short h, int kind) { return kind == 0 ? f16_to_f32(h) : bf16_to_f32(h); }
}  // namespace emu

inline void __syncthreads() { emu::yield(emu::AT_BLOCK); }

// A trap ends the launch with an error (the fiber stops here).
inline void __trap() {
    emu::trapped = true;
    emu::fibers[emu::cur].state = emu::DONE;
    swapcontext(&emu::fibers[emu::cur].ctx, &emu::main_ctx);
}

inline float emu_shuffle(float v, unsigned src) {
    unsigned me = emu::cur;
    emu::shfl[me] = v;
    emu::yield(emu::AT_WARP);
    float r = emu::shfl[(me & ~31u) | (src & 31u)];
    emu::yield(emu::AT_WARP);
    return r;
}

inline float __shfl_xor_sync(unsigned, float v, int lane_mask) {
    return emu_shuffle(v, (emu::cur & 31u) ^ (unsigned)lane_mask);
}

inline float __shfl_sync(unsigned, float v, int src_lane) { return emu_shuffle(v, (unsigned)src_lane); }

#define DYNAMIC_SHARED(T, name) T *name = reinterpret_cast<T *>(emu::dyn_shared.data())

// cvt.rn.{f16,bf16}x2.f32 and cvt.rn.{f16,bf16}.f32, via common.cuh's round-to-nearest-even.
inline unsigned short f32_to_f16_bits(float f);
inline unsigned short f32_to_bf16_bits(float f);
inline unsigned short emu_to16(float x, int kind) { return kind == 0 ? f32_to_f16_bits(x) : f32_to_bf16_bits(x); }
inline unsigned emu_pack2(float lo, float hi, int kind) {
    return (unsigned)emu_to16(lo, kind) | ((unsigned)emu_to16(hi, kind) << 16);
}

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32 for the calling warp:
// c (16 x 8) += a (16 x 16) . b (16 x 8). Lane (g = lane / 4, t = lane % 4) holds A registers
// (g, 2t..2t+1) (g + 8, 2t..) (g, 2t + 8..) (g + 8, 2t + 8..), B registers (k = 2t..2t+1, n = g)
// and (k = 2t + 8.., n = g), and C (g, 2t) (g, 2t + 1) (g + 8, 2t) (g + 8, 2t + 1); the lower
// element of a pair sits in the lower 16 bits.
inline void emu_mma16816(float *c, const unsigned *a, unsigned b0, unsigned b1, int kind) {
    unsigned me = emu::cur, base = me & ~31u;
    for (int i = 0; i < 4; i++) emu::mma_a[me][i] = a[i];
    emu::mma_b[me][0] = b0;
    emu::mma_b[me][1] = b1;
    emu::yield(emu::AT_WARP);
    auto half_of = [&](unsigned reg, int hi) {
        return emu::half_to_f32((unsigned short)(hi ? reg >> 16 : reg & 0xffffu), kind);
    };
    auto A = [&](int row, int k) {
        int g = row & 7, hi_row = row >= 8, t = (k & 7) >> 1, hi_k = k >= 8;
        return half_of(emu::mma_a[base + g * 4 + t][hi_row + 2 * hi_k], k & 1);
    };
    auto B = [&](int k, int col) {
        int t = (k & 7) >> 1;
        return half_of(emu::mma_b[base + col * 4 + t][k >= 8], k & 1);
    };
    unsigned lane = me & 31u, g = lane >> 2, t = lane & 3;
    for (int i = 0; i < 4; i++) {
        int row = g + 8 * (i >> 1), col = 2 * t + (i & 1);
        float s = 0.0f;
        for (int k = 0; k < 16; k++) s += A(row, k) * B(k, col);
        c[i] += s;
    }
    emu::yield(emu::AT_WARP);
}

struct emu_kernel { const char *name; void (*run)(void **); };
extern const emu_kernel EMU_KERNELS[];
extern const int EMU_KERNEL_COUNT;

// Launches kernel `name` on a (gx, gy) grid of 1-D blocks of `bx` threads with `shared` bytes
// of dynamic shared memory; `args` as for cuLaunchKernel. Returns 0, or writes an error to
// `err` and returns 1.
extern "C" int emu_launch(const char *name, unsigned gx, unsigned gy, unsigned bx, unsigned shared,
                          void **args, char *err, int errlen) {
    const emu_kernel *k = nullptr;
    for (int i = 0; i < EMU_KERNEL_COUNT; i++)
        if (strcmp(EMU_KERNELS[i].name, name) == 0) k = &EMU_KERNELS[i];
    if (!k) { snprintf(err, errlen, "no kernel named %s", name); return 1; }
    if (bx == 0 || bx > 1024) { snprintf(err, errlen, "%s: block of %u threads", name, bx); return 1; }
    if (gx == 0 || gy == 0 || gx > 2147483647u || gy > 65535u) {
        snprintf(err, errlen, "%s: grid (%u, %u) outside the device limits", name, gx, gy);
        return 1;
    }
    // A launch gets 48 KiB of dynamic shared memory unless the kernel opts in to more
    // (cuFuncSetAttribute), which the GPU device never does: refuse what a GPU would.
    if (shared > 48u * 1024u) {
        snprintf(err, errlen, "%s: %u bytes of dynamic shared memory (48 KiB without opting in)", name, shared);
        return 1;
    }
    emu::dyn_shared.assign(shared + 16, 0);
    emu::trapped = false;
    gridDim = {gx, gy, 1};
    blockDim = {bx, 1, 1};
    emu::body = k->run;
    emu::body_args = args;
    for (unsigned y = 0; y < gy; y++)
        for (unsigned x = 0; x < gx; x++) {
            blockIdx = {x, y, 0};
            if (!emu::run_block(bx)) {
                snprintf(err, errlen, "%s: deadlock in block (%u, %u): a barrier not every thread reaches", name, x, y);
                return 1;
            }
            if (emu::trapped) {
                snprintf(err, errlen, "%s: __trap() in block (%u, %u)", name, x, y);
                return 1;
            }
        }
    return 0;
}
