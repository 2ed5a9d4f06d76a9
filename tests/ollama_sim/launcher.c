/* The simulator's binaries (`bin/ollama`, `lib/ollama/llama-server`): an ELF that embeds Python and runs
 * tests.ollama_sim.main, so /proc/PID/exe and /proc/PID/cmdline are the install's own paths and argv, exactly as
 * for the real Go binary and llama-server (the fixtures' *.processes.txt compare both).  The process's argv is left
 * untouched; Python gets its own argument vector.  SIM_REPO (the repository root) is set at compile time by
 * tests/ollama_sim/install.py.  TEST DOUBLE: this is not Ollama.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

#ifndef SIM_REPO
#error "build with -DSIM_REPO=\"/path/to/repo\""
#endif

int main(int argc, char **argv)
{
    static char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0)
        return 127;
    exe[n] = '\0';
    char **pyargv = calloc((size_t)argc + 6, sizeof *pyargv);
    if (!pyargv)
        return 127;
    int k = 0;
    pyargv[k++] = argv[0];
    pyargv[k++] = "-E";
    pyargv[k++] = "-s";
    pyargv[k++] = "-c";
    pyargv[k++] = "import sys; sys.path.insert(0, '" SIM_REPO "'); from tests.ollama_sim.main import main; "
                  "sys.exit(main(sys.argv[1], sys.argv[2:]))";
    pyargv[k++] = exe;
    for (int i = 1; i < argc; i++)
        pyargv[k++] = argv[i];
    pyargv[k] = NULL;
    /* No PEP 538 locale coercion: it would add LC_CTYPE=C.UTF-8 to the environment every child inherits. */
    PyPreConfig pre;
    PyPreConfig_InitPythonConfig(&pre);
    pre.coerce_c_locale = 0;
    pre.coerce_c_locale_warn = 0;
    PyStatus st = Py_PreInitialize(&pre);
    if (PyStatus_Exception(st))
        Py_ExitStatusException(st);
    return Py_BytesMain(k, pyargv);
}
