// One spelling for kernel launches, so that tests/emu can run the launch sequences themselves on a
// CPU: CT_LAUNCH(kernel, grid, block, stream, args...) with kernel a plain name (alias a template
// instantiation first), then CT_LAST_ERROR() as the launch check.
#pragma once
#ifdef CT_KERNELS_WARP_EMULATION
#define CT_LAUNCH(kernel, grid, block, stream, ...) emu::launch((grid), (block), [&] { kernel(__VA_ARGS__); })
#define CT_LAST_ERROR() cudaSuccess
#else
#define CT_LAUNCH(kernel, grid, block, stream, ...) kernel<<<(grid), (block), 0, (stream)>>>(__VA_ARGS__)
#define CT_LAST_ERROR() cudaGetLastError()
#endif
