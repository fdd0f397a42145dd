// Runs vidkv CUDA kernels on the CPU (see emu.hpp). Usage: harness CASE_DIR
//   CASE_DIR/arena.bin   bytes of the fake device memory, mapped at EMU_ARENA_BASE
//   CASE_DIR/launches    one launch per line: KERNEL GRID_X GRID_Y BLOCK_X PARAMS_FILE
// Writes CASE_DIR/arena.out (the memory after all launches, in order).
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "emu.hpp"

#define EMU_ARENA_BASE 0x100000000000ull

thread_local EmuDim threadIdx, blockIdx;
EmuDim blockDim, gridDim;
EmuWarp* emu_warps;
std::barrier<>* emu_cta_barrier;
alignas(16) u8 vk_smem[232448];

#include "../../crates/vidkv-cuda/kernels/encode.cu"
#include "../../crates/vidkv-cuda/kernels/decode.cu"
#include "../../crates/vidkv-cuda/kernels/attend.cu"

typedef void (*Kernel)(const void*);
template <class P, void (*K)(P)>
void call(const void* p) {
    P copy;
    std::memcpy(&copy, p, sizeof(P));
    K(copy);
}

static std::vector<u8> read_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) {
        std::fprintf(stderr, "cannot read %s\n", path.c_str());
        std::exit(2);
    }
    return std::vector<u8>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s CASE_DIR\n", argv[0]);
        return 2;
    }
    std::string dir = argv[1];
    alarm(300);  // a deadlock in a kernel (threads at different barriers) ends the run
    std::map<std::string, Kernel> kernels = {
        {"vk_encode_keys", call<EncodeParams, vk_encode_keys>},
        {"vk_encode_values", call<EncodeParams, vk_encode_values>},
        {"vk_decode_keys", call<DecodeParams, vk_decode_keys>},
        {"vk_decode_values", call<DecodeParams, vk_decode_values>},
        {"vk_attend_simt", call<AttnParams, vk_attend_simt>},
        {"vk_attend_tc_matrix", call<AttnParams, vk_attend_tc_matrix>},
        {"vk_attend_tc_identity", call<AttnParams, vk_attend_tc_identity>},
        {"vk_attend_merge", call<AttnParams, vk_attend_merge>},
    };
    std::vector<u8> arena = read_file(dir + "/arena.bin");
    size_t size = (arena.size() + 4095) & ~(size_t)4095;
    void* base = mmap((void*)EMU_ARENA_BASE, size ? size : 4096, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (base != (void*)EMU_ARENA_BASE) {
        std::perror("mmap arena");
        return 2;
    }
    std::memcpy(base, arena.data(), arena.size());
    std::ifstream lf(dir + "/launches");
    std::string line;
    while (std::getline(lf, line)) {
        if (line.empty()) continue;
        std::istringstream ls(line);
        std::string name, pfile;
        unsigned gx, gy, bx;
        ls >> name >> gx >> gy >> bx >> pfile;
        auto it = kernels.find(name);
        if (it == kernels.end()) {
            std::fprintf(stderr, "unknown kernel %s\n", name.c_str());
            return 2;
        }
        std::vector<u8> params = read_file(dir + "/" + pfile);
        gridDim.x = gx;
        gridDim.y = gy;
        blockDim.x = bx;
        unsigned nwarps = (bx + 31) / 32;
        for (unsigned y = 0; y < gy; ++y)
            for (unsigned x = 0; x < gx; ++x) {
                std::memset(vk_smem, 0xa5, sizeof(vk_smem));
                std::barrier<> cta(bx);
                std::vector<EmuWarp> warps(nwarps);
                std::vector<std::barrier<>*> wb;
                for (auto& w : warps) {
                    w.bar = new std::barrier<>(32);
                }
                emu_cta_barrier = &cta;
                emu_warps = warps.data();
                std::vector<std::thread> threads;
                for (unsigned t = 0; t < bx; ++t)
                    threads.emplace_back([&, t, x, y] {
                        threadIdx.x = t;
                        blockIdx.x = x;
                        blockIdx.y = y;
                        it->second(params.data());
                    });
                for (auto& th : threads) th.join();
                for (auto& w : warps) delete w.bar;
            }
    }
    std::ofstream out(dir + "/arena.out", std::ios::binary);
    out.write((const char*)base, (std::streamsize)arena.size());
    return 0;
}
