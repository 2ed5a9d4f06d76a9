/* The ONE list of CUDA driver entry points the shim wraps (reference/cuda-interposition.md sections 2 and 7).
 *
 * Everything else is generated from it: the identity table (real address of each exported libcuda symbol, per
 * libcuda copy), the wrapper functions, the wrapper table and the name table.  Nothing here is exported: the
 * wrappers are only ever handed out by the dlsym hook and the cuGetProcAddress wrappers, by returned pointer.
 *
 * X(name, class, (parameters), (arguments), after)
 *   name   the exact exported symbol (the concrete ABI: cuMemAlloc_v2, cuLaunchKernel_ptsz, ...)
 *   class  HOT   counters only; nothing that allocates, locks or makes a syscall
 *          COLD  may build and send an event
 *          INIT  cuInit: its result is the cu_init event, not a cuda_error
 *          GPA   cuGetProcAddress{,_v2}: hand-written wrappers (shim.c), listed here for the identity table
 *   after  a statement run after the real call, with the result in `r` (and the parameters in scope)
 *
 * Every wrapper forwards the caller's arguments unchanged to the exact pointer it was created for, returns the
 * real result, and reports a non-zero result as cuda_error (except INIT and GPA).
 * Signatures follow cudaTypedefs.h (PFN_<name>_v<version>); handles are void *, CUresult is int.
 */
#ifndef OGPU_CUDA_FNS_H
#define OGPU_CUDA_FNS_H

#define OGPU_CUDA_FUNCTIONS(X) \
    /* entry-point lookup (hand-written wrappers) */ \
    X(cuGetProcAddress, GPA, (const char *sym, void **pfn, int ver, cuuint64_t flags), \
      (sym, pfn, ver, flags), (void)0) \
    X(cuGetProcAddress_v2, GPA, (const char *sym, void **pfn, int ver, cuuint64_t flags, int *status), \
      (sym, pfn, ver, flags, status), (void)0) \
    /* initialisation and device inventory: what the host asks, never more */ \
    X(cuInit, INIT, (unsigned int flags), (flags), ogpu_on_init(r)) \
    X(cuDeviceGetCount, COLD, (int *count), (count), (void)0) \
    X(cuDeviceGet, COLD, (CUdevice *dev, int ordinal), (dev, ordinal), ogpu_on_device_get(r, dev, ordinal)) \
    X(cuDeviceGetName, COLD, (char *name, int len, CUdevice dev), (name, len, dev), \
      ogpu_on_device_str(r, OGPU_DEV_NAME, name, len, dev)) \
    X(cuDeviceGetUuid, COLD, (CUuuid *uuid, CUdevice dev), (uuid, dev), ogpu_on_device_uuid(r, uuid, dev)) \
    X(cuDeviceGetUuid_v2, COLD, (CUuuid *uuid, CUdevice dev), (uuid, dev), ogpu_on_device_uuid(r, uuid, dev)) \
    X(cuDeviceGetPCIBusId, COLD, (char *bus, int len, CUdevice dev), (bus, len, dev), \
      ogpu_on_device_str(r, OGPU_DEV_PCI, bus, len, dev)) \
    X(cuDeviceTotalMem_v2, COLD, (size_t *bytes, CUdevice dev), (bytes, dev), ogpu_on_device_mem(r, bytes, dev)) \
    /* contexts */ \
    X(cuDevicePrimaryCtxRetain, COLD, (CUcontext *ctx, CUdevice dev), (ctx, dev), ogpu_on_ctx(r, dev)) \
    X(cuCtxCreate_v2, COLD, (CUcontext *ctx, unsigned int flags, CUdevice dev), (ctx, flags, dev), \
      ogpu_on_ctx(r, dev)) \
    X(cuCtxCreate_v3, COLD, (CUcontext *ctx, void *affinity, int n, unsigned int flags, CUdevice dev), \
      (ctx, affinity, n, flags, dev), ogpu_on_ctx(r, dev)) \
    X(cuCtxCreate_v4, COLD, (CUcontext *ctx, void *params, unsigned int flags, CUdevice dev), \
      (ctx, params, flags, dev), ogpu_on_ctx(r, dev)) \
    /* code loading: error codes only ("no kernel image" is 209 at cuLibraryGetKernel) */ \
    X(cuModuleLoadData, COLD, (CUmodule *mod, const void *image), (mod, image), (void)0) \
    X(cuModuleLoadDataEx, COLD, (CUmodule *mod, const void *image, unsigned int n, void *opts, void **vals), \
      (mod, image, n, opts, vals), (void)0) \
    X(cuModuleGetFunction, COLD, (CUfunction *fn, CUmodule mod, const char *name), (fn, mod, name), (void)0) \
    X(cuLibraryLoadData, COLD, (CUlibrary *lib, const void *code, void *jo, void **jv, unsigned int nj, \
                                void *lo, void **lv, unsigned int nl), \
      (lib, code, jo, jv, nj, lo, lv, nl), (void)0) \
    X(cuLibraryGetKernel, COLD, (CUkernel *k, CUlibrary lib, const char *name), (k, lib, name), (void)0) \
    /* device memory (VA reservations are not memory and are not wrapped) */ \
    X(cuMemAlloc_v2, HOT, (CUdeviceptr *p, size_t n), (p, n), ogpu_on_alloc(r, p, n)) \
    X(cuMemAllocPitch_v2, HOT, (CUdeviceptr *p, size_t *pitch, size_t w, size_t h, unsigned int esz), \
      (p, pitch, w, h, esz), ogpu_on_alloc(r, p, (r == 0 && pitch) ? *pitch * h : 0)) \
    X(cuMemAllocManaged, HOT, (CUdeviceptr *p, size_t n, unsigned int fl), (p, n, fl), ogpu_on_alloc(r, p, n)) \
    X(cuMemAllocAsync, HOT, (CUdeviceptr *p, size_t n, CUstream s), (p, n, s), ogpu_on_alloc(r, p, n)) \
    X(cuMemAllocAsync_ptsz, HOT, (CUdeviceptr *p, size_t n, CUstream s), (p, n, s), ogpu_on_alloc(r, p, n)) \
    X(cuMemAllocFromPoolAsync, HOT, (CUdeviceptr *p, size_t n, void *pool, CUstream s), (p, n, pool, s), \
      ogpu_on_alloc(r, p, n)) \
    X(cuMemAllocFromPoolAsync_ptsz, HOT, (CUdeviceptr *p, size_t n, void *pool, CUstream s), (p, n, pool, s), \
      ogpu_on_alloc(r, p, n)) \
    X(cuMemFree_v2, HOT, (CUdeviceptr p), (p), ogpu_on_free(r, p)) \
    X(cuMemFreeAsync, HOT, (CUdeviceptr p, CUstream s), (p, s), ogpu_on_free(r, p)) \
    X(cuMemFreeAsync_ptsz, HOT, (CUdeviceptr p, CUstream s), (p, s), ogpu_on_free(r, p)) \
    X(cuMemCreate, HOT, (CUmemGenericAllocationHandle *h, size_t n, const void *prop, unsigned long long fl), \
      (h, n, prop, fl), ogpu_on_create(r, h, n)) \
    X(cuMemRelease, HOT, (CUmemGenericAllocationHandle h), (h), ogpu_on_release(r, h)) \
    /* copies with a known direction (cuMemcpy/cuMemcpyAsync on unified addresses have none: errors only) */ \
    X(cuMemcpyHtoD_v2, HOT, (CUdeviceptr d, const void *s, size_t n), (d, s, n), ogpu_on_copy(r, OGPU_HTOD, n)) \
    X(cuMemcpyHtoD_v2_ptds, HOT, (CUdeviceptr d, const void *s, size_t n), (d, s, n), \
      ogpu_on_copy(r, OGPU_HTOD, n)) \
    X(cuMemcpyDtoH_v2, HOT, (void *d, CUdeviceptr s, size_t n), (d, s, n), ogpu_on_copy(r, OGPU_DTOH, n)) \
    X(cuMemcpyDtoH_v2_ptds, HOT, (void *d, CUdeviceptr s, size_t n), (d, s, n), ogpu_on_copy(r, OGPU_DTOH, n)) \
    X(cuMemcpyDtoD_v2, HOT, (CUdeviceptr d, CUdeviceptr s, size_t n), (d, s, n), ogpu_on_copy(r, OGPU_DTOD, n)) \
    X(cuMemcpyDtoD_v2_ptds, HOT, (CUdeviceptr d, CUdeviceptr s, size_t n), (d, s, n), \
      ogpu_on_copy(r, OGPU_DTOD, n)) \
    X(cuMemcpyHtoDAsync_v2, HOT, (CUdeviceptr d, const void *s, size_t n, CUstream st), (d, s, n, st), \
      ogpu_on_copy(r, OGPU_HTOD, n)) \
    X(cuMemcpyHtoDAsync_v2_ptsz, HOT, (CUdeviceptr d, const void *s, size_t n, CUstream st), (d, s, n, st), \
      ogpu_on_copy(r, OGPU_HTOD, n)) \
    X(cuMemcpyDtoHAsync_v2, HOT, (void *d, CUdeviceptr s, size_t n, CUstream st), (d, s, n, st), \
      ogpu_on_copy(r, OGPU_DTOH, n)) \
    X(cuMemcpyDtoHAsync_v2_ptsz, HOT, (void *d, CUdeviceptr s, size_t n, CUstream st), (d, s, n, st), \
      ogpu_on_copy(r, OGPU_DTOH, n)) \
    X(cuMemcpyDtoDAsync_v2, HOT, (CUdeviceptr d, CUdeviceptr s, size_t n, CUstream st), (d, s, n, st), \
      ogpu_on_copy(r, OGPU_DTOD, n)) \
    X(cuMemcpyDtoDAsync_v2_ptsz, HOT, (CUdeviceptr d, CUdeviceptr s, size_t n, CUstream st), (d, s, n, st), \
      ogpu_on_copy(r, OGPU_DTOD, n)) \
    X(cuMemcpyPeer, HOT, (CUdeviceptr d, CUcontext dc, CUdeviceptr s, CUcontext sc, size_t n), \
      (d, dc, s, sc, n), ogpu_on_copy(r, OGPU_DTOD, n)) \
    X(cuMemcpyPeer_ptds, HOT, (CUdeviceptr d, CUcontext dc, CUdeviceptr s, CUcontext sc, size_t n), \
      (d, dc, s, sc, n), ogpu_on_copy(r, OGPU_DTOD, n)) \
    X(cuMemcpyPeerAsync, HOT, (CUdeviceptr d, CUcontext dc, CUdeviceptr s, CUcontext sc, size_t n, CUstream st), \
      (d, dc, s, sc, n, st), ogpu_on_copy(r, OGPU_DTOD, n)) \
    X(cuMemcpyPeerAsync_ptsz, HOT, \
      (CUdeviceptr d, CUcontext dc, CUdeviceptr s, CUcontext sc, size_t n, CUstream st), \
      (d, dc, s, sc, n, st), ogpu_on_copy(r, OGPU_DTOD, n)) \
    X(cuMemcpy, HOT, (CUdeviceptr d, CUdeviceptr s, size_t n), (d, s, n), (void)0) \
    X(cuMemcpy_ptds, HOT, (CUdeviceptr d, CUdeviceptr s, size_t n), (d, s, n), (void)0) \
    X(cuMemcpyAsync, HOT, (CUdeviceptr d, CUdeviceptr s, size_t n, CUstream st), (d, s, n, st), (void)0) \
    X(cuMemcpyAsync_ptsz, HOT, (CUdeviceptr d, CUdeviceptr s, size_t n, CUstream st), (d, s, n, st), (void)0) \
    /* launches (captured graph replays are only visible as cuGraphLaunch) */ \
    X(cuLaunchKernel, HOT, (CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx, \
                            unsigned int by, unsigned int bz, unsigned int shm, CUstream s, void **kp, void **ex), \
      (f, gx, gy, gz, bx, by, bz, shm, s, kp, ex), ogpu_on_launch(r, OGPU_L_KERNEL)) \
    X(cuLaunchKernel_ptsz, HOT, (CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, \
                                 unsigned int bx, unsigned int by, unsigned int bz, unsigned int shm, CUstream s, \
                                 void **kp, void **ex), \
      (f, gx, gy, gz, bx, by, bz, shm, s, kp, ex), ogpu_on_launch(r, OGPU_L_KERNEL)) \
    X(cuLaunchKernelEx, HOT, (const void *cfg, CUfunction f, void **kp, void **ex), (cfg, f, kp, ex), \
      ogpu_on_launch(r, OGPU_L_KERNEL_EX)) \
    X(cuLaunchKernelEx_ptsz, HOT, (const void *cfg, CUfunction f, void **kp, void **ex), (cfg, f, kp, ex), \
      ogpu_on_launch(r, OGPU_L_KERNEL_EX)) \
    X(cuLaunchCooperativeKernel, HOT, (CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, \
                                       unsigned int bx, unsigned int by, unsigned int bz, unsigned int shm, \
                                       CUstream s, void **kp), \
      (f, gx, gy, gz, bx, by, bz, shm, s, kp), ogpu_on_launch(r, OGPU_L_COOP)) \
    X(cuLaunchCooperativeKernel_ptsz, HOT, (CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, \
                                            unsigned int bx, unsigned int by, unsigned int bz, unsigned int shm, \
                                            CUstream s, void **kp), \
      (f, gx, gy, gz, bx, by, bz, shm, s, kp), ogpu_on_launch(r, OGPU_L_COOP)) \
    X(cuGraphLaunch, HOT, (CUgraphExec g, CUstream s), (g, s), ogpu_on_launch(r, OGPU_L_GRAPH)) \
    X(cuGraphLaunch_ptsz, HOT, (CUgraphExec g, CUstream s), (g, s), ogpu_on_launch(r, OGPU_L_GRAPH))

#endif
