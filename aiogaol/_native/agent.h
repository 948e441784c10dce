/*
 * The sandbox's resident agent (agent.c): its wire format with the server (aiogaol/_sandbox.py mirrors
 * these numbers and layouts with struct; the test suite checks the sizes through the cffi module).
 *
 * Requests, one SOCK_SEQPACKET message each (at most 64 KiB), native byte order:
 *   struct aiogaol_agent_request, then by op:
 *   EXEC:   uint32 flags, n_rlimits, argc, envc; int32 umask (-1: keep); uint32 pad;
 *           n_rlimits x {int32 resource, pad; uint64 soft, hard}; cwd NUL; argc strings; envc strings.
 *           SCM_RIGHTS: 1 to 8 fds, which become the program's 0..n-1.
 *   SIGNAL: uint32 id of the call; int32 signal; uint32 group (1: the call's process group, 0: its
 *           first process only).
 *   WRITE:  uint32 mode, pad; uint64 max bytes; path NUL (relative to the workspace).  SCM_RIGHTS: the
 *           read end of a pipe with the file's bytes.
 *   READ:   the same layout (mode unused); SCM_RIGHTS: the write end of a pipe for the bytes.
 *   BUSY:   uint32 id of a background call; uint32 busy (1: it counts as running, for the idle timeout,
 *           until a BUSY 0; the server sends it around each code cell).
 * Replies, struct aiogaol_agent_reply each:
 *   STARTED (a: the PID in the sandbox), FAILED (a: errno, b: stage), EXITED (a: wait status; rusage of
 *   the call's process and its reaped children; for WRITE/READ the exit code is 0 or an errno), ACK (a:
 *   0 or the errno of kill), IDLE (the idle timeout passed: the agent exits, and init ends the jail).
 */
#ifndef AIOGAOL_AGENT_H
#define AIOGAOL_AGENT_H

#include <stdint.h>

enum aiogaol_agent_op {
    AIOGAOL_AGENT_EXEC = 1,
    AIOGAOL_AGENT_SIGNAL = 2,
    AIOGAOL_AGENT_WRITE = 3,
    AIOGAOL_AGENT_READ = 4,
    AIOGAOL_AGENT_BUSY = 5,
};

enum aiogaol_agent_reply_kind {
    AIOGAOL_AGENT_STARTED = 1,
    AIOGAOL_AGENT_FAILED = 2,
    AIOGAOL_AGENT_EXITED = 3,
    AIOGAOL_AGENT_ACK = 4,
    AIOGAOL_AGENT_IDLE = 5,
};

enum aiogaol_agent_stage {
    AIOGAOL_AGENT_STAGE_REQUEST = 1, /* a malformed request, or no free call slot (EAGAIN) */
    AIOGAOL_AGENT_STAGE_FORK = 2,
    AIOGAOL_AGENT_STAGE_SETSID = 3,
    AIOGAOL_AGENT_STAGE_RLIMIT = 4,
    AIOGAOL_AGENT_STAGE_FDS = 5,
    AIOGAOL_AGENT_STAGE_CHDIR = 6,
    AIOGAOL_AGENT_STAGE_EXEC = 7,
    AIOGAOL_AGENT_STAGE_INTERPRETER = 8,
};

#define AIOGAOL_AGENT_BACKGROUND 1u /* EXEC flag: this call does not keep the sandbox from idling */

struct aiogaol_agent_request {
    uint32_t op;
    uint32_t id;
};

struct aiogaol_agent_exec {
    uint32_t flags, n_rlimits, argc, envc;
    int32_t umask;
    uint32_t pad;
};

struct aiogaol_agent_rlimit {
    int32_t resource, pad;
    uint64_t soft, hard;
};

struct aiogaol_agent_file {
    uint32_t mode, pad;
    uint64_t max;
};

struct aiogaol_agent_reply {
    uint32_t kind;
    uint32_t id;
    int32_t a;
    int32_t b;
    uint64_t utime_ns;
    uint64_t stime_ns;
    uint64_t maxrss; /* bytes */
};

/* sizeof the request header (0), exec (1), rlimit (2) and file (3) bodies and the reply (4): the server's
 * struct formats are checked against these (tests/test_sandbox.py). */
int aiogaol_agent_wire_size(int which);

/* Runs the agent on sock (kept from the jail's fds), in the workspace; closes err_fd once it is ready.
 * idle_ms > 0: exit after that long with no call running.  Never returns. */
void aiogaol_agent_main(int sock, const char *workspace, int err_fd, long idle_ms) __attribute__((noreturn));

/* A set-up failure before the agent is ready: one record on the error pipe (step "start the sandbox's
 * agent"), then _exit. */
void aiogaol_agent_fail(int err_fd, int err, const char *detail) __attribute__((noreturn));

#endif
