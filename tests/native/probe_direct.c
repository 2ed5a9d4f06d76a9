/* Driver-API program linked directly against libcuda.so.1: every call goes through its own PLT, which the shim
 * (exporting no cu* symbol, DESIGN principle 3) does not see.  Its output must not change under the shim. */
#include <stdio.h>

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
extern CUresult cuInit(unsigned int);
extern CUresult cuDeviceGetCount(int *);
extern CUresult cuDeviceGet(CUdevice *, int);
extern CUresult cuDeviceGetName(char *, int, CUdevice);
extern CUresult cuMemAlloc_v2(CUdeviceptr *, size_t);
extern CUresult cuMemFree_v2(CUdeviceptr);

int main(void)
{
    int n = -1;
    CUresult r = cuInit(0);
    printf("cuInit = %d\n", r);
    if (r)
        return 1;
    printf("cuDeviceGetCount = %d (%d)\n", cuDeviceGetCount(&n), n);
    for (int i = 0; i < n; i++) {
        CUdevice d;
        char name[128] = "";
        cuDeviceGet(&d, i);
        printf("cuDeviceGetName = %d: %s\n", cuDeviceGetName(name, sizeof name, d), name);
    }
    CUdeviceptr p;
    printf("cuMemAlloc_v2 = %d\n", cuMemAlloc_v2(&p, 4096));
    printf("cuMemFree_v2 = %d\n", cuMemFree_v2(p));
    return 0;
}
