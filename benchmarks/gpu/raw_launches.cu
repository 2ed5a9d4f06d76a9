// A raw CUDA program (nvcc, static cudart: dlopen libcuda.so.1 + cuGetProcAddress self-query) that launches a
// known number of kernels and queries the device the way an inventory would.
//   raw_launches N   -> prints the device name, UUID, PCI bus id and the counter (== N)
#include <cstdio>
#include <cstdlib>
#include <cuda_runtime.h>

__global__ void bump(unsigned long long *c) { atomicAdd(c, 1ull); }

#define CK(x)                                                                                 \
    do {                                                                                      \
        cudaError_t e_ = (x);                                                                 \
        if (e_ != cudaSuccess) {                                                              \
            std::printf("%s: %s\n", #x, cudaGetErrorString(e_));                              \
            return 1;                                                                         \
        }                                                                                     \
    } while (0)

int main(int argc, char **argv)
{
    int n = argc > 1 ? std::atoi(argv[1]) : 10000;
    cudaDeviceProp p;
    CK(cudaGetDeviceProperties(&p, 0));
    char bus[64];
    CK(cudaDeviceGetPCIBusId(bus, sizeof bus, 0));
    std::printf("name %s\nuuid GPU-", p.name);
    for (int i = 0; i < 16; i++)
        std::printf("%s%02x", (i == 4 || i == 6 || i == 8 || i == 10) ? "-" : "", (unsigned char)p.uuid.bytes[i]);
    std::printf("\npci %s\n", bus);
    unsigned long long *c, host = 0;
    CK(cudaMalloc(&c, sizeof *c));
    CK(cudaMemset(c, 0, sizeof *c));
    for (int i = 0; i < n; i++)
        bump<<<1, 1>>>(c);
    CK(cudaGetLastError());
    CK(cudaMemcpy(&host, c, sizeof host, cudaMemcpyDeviceToHost));
    CK(cudaFree(c));
    std::printf("counter %llu\n", host);
    return host == (unsigned long long)n ? 0 : 2;
}
