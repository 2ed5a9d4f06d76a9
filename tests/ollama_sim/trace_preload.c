/* An LD_PRELOAD object for the simulator's tests, like the one behind fixtures/ollama-real-cpu/
 * ld-preload.process-trace.txt: every process that loads it appends "pid ppid exe | argv " to $SIM_TRACE_FILE.
 * Seeing a line proves the process inherited LD_PRELOAD; the argv is what /proc/PID/cmdline says.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

__attribute__((constructor)) static void sim_trace(void)
{
    const char *path = getenv("SIM_TRACE_FILE");
    if (!path)
        return;
    static char exe[4096], cmd[8192], line[16384];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[n > 0 ? n : 0] = '\0';
    ssize_t m = 0;
    int fd = open("/proc/self/cmdline", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        m = read(fd, cmd, sizeof cmd - 1);
        close(fd);
    }
    for (ssize_t i = 0; i < m; i++)
        if (cmd[i] == '\0')
            cmd[i] = ' ';
    cmd[m > 0 ? m : 0] = '\0';
    int len = snprintf(line, sizeof line, "%d %d %s | %s\n", (int)getpid(), (int)getppid(), exe, cmd);
    int out = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (out >= 0) {
        if (write(out, line, (size_t)len) < 0)
            line[0] = '\0';
        close(out);
    }
}
