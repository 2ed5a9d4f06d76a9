# ruff: noqa: E501 - log lines are kept whole, as llama-server prints them
"""A generation-D partial load built from llama-server's format strings (issue 17), for tests of the fit arithmetic.

Not a real log (the real ones are in ../shared/fixtures): a 16-layer 2048-wide f16 model, 8192-token context, with
3000 MiB free. Every line's format is the one the real 0.32.15 H100 log prints (`healthy.server.log`); the figures
are chosen so that the hand arithmetic in tests/test_fit_advice.py is easy to follow:

- KV per token, f16: 16 layers * 16 kv heads * (128 + 128) * 2 B = 131072 B; 8192 tokens: 1024 MiB.
- full offload: model 2100 + context 1024 + compute 300 = 3424 MiB; with the 1024 MiB fit target the device needs
  4448 MiB and has 3000: short by 1448 MiB.
- llama-server placed 8 of 17 layers: model 987 MiB, KV 512 MiB, compute 300 MiB on CUDA0.
"""

from __future__ import annotations

D_PARTIAL = """\
time=2026-12-06T19:19:18.620Z level=INFO source=routes.go:2008 msg="Listening on 127.0.0.1:40243 (version 0.32.15)"
time=2026-12-06T19:19:22.167Z level=INFO source=llama_server.go:433 msg="starting llama-server" \
cmd="/opt/ollama/lib/ollama/llama-server --model /m/blobs/sha256-abc --port 46521 --host 127.0.0.1 --no-webui \
--offline -c 8192 -np 1 --log-verbosity 4 --no-log-prefix --no-log-timestamps --flash-attn auto -b 512 -ub 512"
time=2026-12-06T19:19:22.167Z level=INFO source=sched.go:620 msg="gpu memory" id=0 library=CUDA \
available="2.5 GiB" free="2.9 GiB" minimum="457.0 MiB" overhead="0 B"
cmn  common_param:   - CUDA0   : NVIDIA H100 80GB HBM3 (81079 MiB, 3000 MiB free)
common_params_fit_impl: getting device memory data for initial parameters:
common_memory_breakdown_print: | memory breakdown [MiB]     | total    free    self   model   context   compute    unaccounted |
common_memory_breakdown_print: |   - CUDA0 (H100 80GB HBM3) | 81079 =  3000 + (3424 =  2100 +    1024 +     300) +      74655 |
common_memory_breakdown_print: |   - Host                   |                    128 =   125 +       0 +       3                |
common_params_fit_impl: projected to use 3424 MiB of device memory vs. 3000 MiB of free device memory
common_params_fit_impl: cannot meet free memory target of 1024 MiB, need to reduce device memory by 1448 MiB
common_params_fit_impl: context size set by user to 8192 -> no change
llama_prepare_model_devices: using device CUDA0 (NVIDIA H100 80GB HBM3) (0000:00:06.0) - 3000 MiB free
print_info: file type   = F16
print_info: file size   = 2.10 GiB (16.00 BPW) \n\
print_info: n_layer               = 16
print_info: n_head                = 16
print_info: n_head_kv             = 16
print_info: n_embd_head_k         = 128
print_info: n_embd_head_v         = 128
load_tensors: offloading 8 repeating layers to GPU
load_tensors: offloaded 8/17 layers to GPU
load_tensors:   CPU_Mapped model buffer size =  1238.00 MiB
load_tensors:        CUDA0 model buffer size =   987.00 MiB
llama_context: n_ctx                 = 8192
llama_context: n_seq_max             = 1
llama_context: flash_attn            = auto
llama_kv_cache:      CUDA0 KV buffer size =   512.00 MiB
llama_kv_cache:        CPU KV buffer size =   512.00 MiB
llama_kv_cache: size = 1024.00 MiB (  8192 cells,  16 layers,  1/1 seqs), K (f16):  512.00 MiB, V (f16):  512.00 MiB
sched_reserve:      CUDA0 compute buffer size =   300.00 MiB
sched_reserve:  CUDA_Host compute buffer size =    20.00 MiB
"""


# A generation-C partial load (Ollama engine, 0.13-style), built from the sources' format strings (server/sched.go
# `gpu memory`, ml/backend/ggml/ggml.go `offloaded %d/%d layers to GPU`, ml/device.go's summary lines): 24 of 33
# layers on a GPU with 4.6 GiB free. Per layer left on the CPU: (1.1 GiB weights + 256 MiB KV) / 9 = 153.6 MiB.
C_PARTIAL = """\
time=2025-12-18T10:00:00.000Z level=INFO source=routes.go:1600 msg="Listening on 127.0.0.1:11434 (version 0.13.5)"
time=2025-12-18T10:00:05.000Z level=INFO source=server.go:400 msg="starting runner" cmd="/usr/bin/ollama runner \
--ollama-engine --model /m/blobs/sha256-c13 --port 40001"
time=2025-12-18T10:00:05.100Z level=INFO source=sched.go:443 msg="system memory" total="62.7 GiB" free="56.0 GiB" \
free_swap="0 B"
time=2025-12-18T10:00:05.100Z level=INFO source=sched.go:450 msg="gpu memory" id=GPU-1 library=CUDA \
available="4.2 GiB" free="4.6 GiB" minimum="457.0 MiB" overhead="0 B"
time=2025-12-18T10:00:06.000Z level=INFO source=ggml.go:494 msg="offloaded 24/33 layers to GPU"
time=2025-12-18T10:00:06.000Z level=INFO source=device.go:240 msg="model weights" device=CUDA0 size="3.0 GiB"
time=2025-12-18T10:00:06.000Z level=INFO source=device.go:245 msg="model weights" device=CPU size="1.1 GiB"
time=2025-12-18T10:00:06.000Z level=INFO source=device.go:251 msg="kv cache" device=CUDA0 size="768.0 MiB"
time=2025-12-18T10:00:06.000Z level=INFO source=device.go:256 msg="kv cache" device=CPU size="256.0 MiB"
time=2025-12-18T10:00:06.000Z level=INFO source=device.go:262 msg="compute graph" device=CUDA0 size="300.0 MiB"
time=2025-12-18T10:00:06.000Z level=INFO source=device.go:267 msg="compute graph" device=CPU size="20.0 MiB"
time=2025-12-18T10:00:06.000Z level=INFO source=device.go:272 msg="total memory" size="5.4 GiB"
"""
