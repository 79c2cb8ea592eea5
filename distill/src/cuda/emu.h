// Runs the trainer's CUDA kernels on the CPU, for tests on machines without a GPU: each CUDA
// thread of a block is a fiber (ucontext), __syncthreads and warp shuffles are barriers
// between fibers, and blocks run one after another. Slow, single-threaded and exact about
// barrier semantics: a barrier some threads never reach is reported as a deadlock.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>
#include <ucontext.h>

struct emu_dim3 { unsigned x, y, z; };
static emu_dim3 threadIdx, blockIdx, blockDim, gridDim;

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
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
}  // namespace emu

inline void __syncthreads() { emu::yield(emu::AT_BLOCK); }

inline float __shfl_xor_sync(unsigned, float v, int lane_mask) {
    unsigned me = emu::cur;
    emu::shfl[me] = v;
    emu::yield(emu::AT_WARP);
    float r = emu::shfl[(me & ~31u) | ((me & 31u) ^ (unsigned)lane_mask)];
    emu::yield(emu::AT_WARP);
    return r;
}

struct emu_kernel { const char *name; void (*run)(void **); };
extern const emu_kernel EMU_KERNELS[];
extern const int EMU_KERNEL_COUNT;

// Launches kernel `name` on a (gx, gy) grid of 1-D blocks of `bx` threads; `args` as for
// cuLaunchKernel. Returns 0, or writes an error to `err` and returns 1.
extern "C" int emu_launch(const char *name, unsigned gx, unsigned gy, unsigned bx, void **args,
                          char *err, int errlen) {
    const emu_kernel *k = nullptr;
    for (int i = 0; i < EMU_KERNEL_COUNT; i++)
        if (strcmp(EMU_KERNELS[i].name, name) == 0) k = &EMU_KERNELS[i];
    if (!k) { snprintf(err, errlen, "no kernel named %s", name); return 1; }
    if (bx == 0 || bx > 1024) { snprintf(err, errlen, "%s: block of %u threads", name, bx); return 1; }
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
        }
    return 0;
}
