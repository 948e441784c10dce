/*
 * The kernel's floor for a jail on this machine: what any sandbox that gives each program its own user,
 * PID, mount, IPC, UTS, cgroup and network namespaces must pay at the least, with nothing else done.
 *
 * Keeps `concurrency` children in flight for `seconds`: each is cloned straight into the seven
 * namespaces, has its uid/gid maps written (as every jail needs to reach a file), execs the program and
 * exits; the parent reaps it.  No mounts, no pivot_root, no seccomp filter, no Landlock, no Python.
 * Prints one JSON line: spawns per second, and the latency of each spawn (clone to reap) in ms.
 *
 * Usage: floor CONCURRENCY SECONDS PROGRAM [--no-net]
 * Built and run by benchmarks/spawn.py; a standalone program, so it may wait for any child.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONC 1024
#define MAX_SAMPLES 1000000

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void write_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text)) {
        perror(path);
        exit(1);
    }
    close(fd);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    static pid_t pids[MAX_CONC];
    static double started[MAX_CONC];
    static double lat[MAX_SAMPLES];
    unsigned long flags = CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS |
                          CLONE_NEWCGROUP | CLONE_NEWNET;
    int conc, running = 0, i;
    long n = 0;
    double seconds, t0, end, elapsed;
    char *prog_argv[2] = {NULL, NULL};
    char *envp[1] = {NULL};

    if (argc < 4) {
        fprintf(stderr, "usage: %s CONCURRENCY SECONDS PROGRAM [--no-net]\n", argv[0]);
        return 2;
    }
    conc = atoi(argv[1]);
    seconds = atof(argv[2]);
    prog_argv[0] = argv[3];
    if (argc > 4 && strcmp(argv[4], "--no-net") == 0)
        flags &= ~(unsigned long)CLONE_NEWNET;
    if (conc < 1 || conc > MAX_CONC || seconds <= 0)
        return 2;

    t0 = now();
    end = t0 + seconds;
    for (;;) {
        while (running < conc && now() < end) {
            char path[64], map[64];
            int go[2];
            pid_t pid;
            if (pipe2(go, O_CLOEXEC) < 0)
                return perror("pipe2"), 1;
            double t = now();
            pid = (pid_t)syscall(SYS_clone, flags | SIGCHLD, NULL, NULL, NULL, NULL);
            if (pid < 0)
                return perror("clone"), 1;
            if (pid == 0) {
                char c;
                close(go[1]);
                if (read(go[0], &c, 1) != 1)
                    _exit(126);
                execve(prog_argv[0], prog_argv, envp);
                _exit(127);
            }
            close(go[0]);
            snprintf(path, sizeof path, "/proc/%d/setgroups", (int)pid);
            write_file(path, "deny");
            snprintf(path, sizeof path, "/proc/%d/gid_map", (int)pid);
            snprintf(map, sizeof map, "0 %u 1", (unsigned)getgid());
            write_file(path, map);
            snprintf(path, sizeof path, "/proc/%d/uid_map", (int)pid);
            snprintf(map, sizeof map, "0 %u 1", (unsigned)getuid());
            write_file(path, map);
            if (write(go[1], "g", 1) != 1)
                return perror("write"), 1;
            close(go[1]);
            for (i = 0; i < conc; i++)
                if (pids[i] == 0) {
                    pids[i] = pid;
                    started[i] = t;
                    break;
                }
            running++;
        }
        if (running == 0)
            break;
        int status;
        pid_t done = waitpid(-1, &status, 0);
        if (done < 0) {
            if (errno == EINTR)
                continue;
            return perror("waitpid"), 1;
        }
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "a child failed: wait status %d\n", status);
            return 1;
        }
        for (i = 0; i < conc; i++)
            if (pids[i] == done) {
                if (n < MAX_SAMPLES)
                    lat[n] = (now() - started[i]) * 1e3;
                pids[i] = 0;
                break;
            }
        n++;
        running--;
    }
    elapsed = now() - t0;
    if (n == 0)
        return 1;
    long k = n < MAX_SAMPLES ? n : MAX_SAMPLES;
    qsort(lat, (size_t)k, sizeof *lat, cmp_double);
    printf("{\"spawns_per_s\": %.1f, \"n\": %ld, \"median_ms\": %.3f, \"p99_ms\": %.3f, \"max_ms\": %.3f}\n",
           (double)n / elapsed, n, lat[k / 2], lat[(long)((double)(k - 1) * 0.99)], lat[k - 1]);
    return 0;
}
