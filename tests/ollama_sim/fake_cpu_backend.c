/* A trivial stand-in for ggml's CPU backend (libggml-cpu.so) in the simulator's install: it exports what ggml's
 * loader looks up (ggml_backend_score, ggml_backend_init) and nothing else.  TEST DOUBLE, not ggml.
 */
#define EXPORT __attribute__((visibility("default")))

static int reg_placeholder;

EXPORT int ggml_backend_score(void) { return 1; }

EXPORT void *ggml_backend_init(void) { return &reg_placeholder; }
