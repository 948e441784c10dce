/*
 * The C core of aiogaol: the steps that turn a plan into a jailed process.
 *
 * Python plans (what to mount, which namespaces, which limits); this code only carries the plan out,
 * in a small helper executable that the server starts with posix_spawn (vfork-class, so the cost does
 * not grow with the server's memory), once, as the spawner that serves every jail of the server.  The
 * code is split by the process that runs it (see core.h, the internal header).  Every failure is written as one fixed-size record on the error
 * pipe, naming the step, the errno and the path, in the manner of CPython's _posixsubprocess.
 */
#ifndef AIOGAOL_JAIL_H
#define AIOGAOL_JAIL_H

#include <stddef.h>
#include <stdint.h>

/* The numbered steps of a spawn, in the order they run (docs/spawn.md, "The steps", lists them in this
 * order, numbered as here, and tests/test_docs.py checks it).  Python reads the names through the cffi
 * module (aiogaol_step_name), so this list is the single source of truth for both sides.  Each step
 * names the file whose process takes it. */
#define AIOGAOL_STEPS(X)                                   \
    X(NONE, "none")                                        \
    /* the spawner (spawner.c), per request */             \
    X(ARGS, "parse helper arguments")                      \
    X(HAND_OVER, "hand the request to a waiting init")    \
    X(CLONE_INIT, "clone init")                            \
    X(UNSHARE, "unshare namespaces")                       \
    X(SETGROUPS, "write setgroups")                        \
    X(GID_MAP, "write gid_map")                            \
    X(UID_MAP, "write uid_map")                            \
    /* init (init.c), before the jail */                   \
    X(CLOSE_FDS, "close inherited fds")                    \
    X(PRIORITY, "set the jail's niceness")                 \
    X(LOOPBACK, "bring up loopback")                       \
    /* init building the jail (mounts.c) */                \
    X(MAKE_PRIVATE, "make mounts private")                 \
    X(STAGING, "mount staging tmpfs")                      \
    X(PIVOT_STAGING, "pivot_root into staging")            \
    X(MKDIR, "mkdir")                                      \
    X(PROC, "mount proc")                                  \
    X(TMPFS, "mount tmpfs")                                \
    X(DEVICE, "bind device")                               \
    X(SYMLINK, "symlink")                                  \
    X(SETATTR, "set mount attributes")                     \
    X(MASK, "mask a kernel interface")                     \
    X(DEVPTS, "mount devpts")                              \
    X(BIND, "bind mount")                                  \
    X(BIND_CHANGED, "bind source changed")                 \
    X(TARGET_CHANGED, "mount point changed")               \
    X(DETACH_OLDROOT, "detach old root")                   \
    X(PIVOT_ROOT, "pivot_root into jail")                  \
    X(ROOT_READONLY, "make jail root read-only")           \
    X(HOSTNAME, "sethostname")                             \
    /* init, making the program (init.c) */                \
    X(IDENTITY, "switch to the jail's user")               \
    X(SIGNALFD, "signalfd")                                \
    X(FORK_PROGRAM, "fork program")                        \
    /* the program (program.c) */                          \
    X(CHDIR, "chdir")                                      \
    X(SETSID, "setsid")                                    \
    X(RLIMIT, "setrlimit")                                 \
    X(SIGNALS, "reset signals")                            \
    X(NO_NEW_PRIVS, "set no_new_privs")                    \
    X(CAPABILITIES, "drop capabilities")                   \
    X(LANDLOCK, "landlock")                                \
    X(RULE_CHANGED, "landlock rule path changed")          \
    X(SECCOMP, "load seccomp filter")                      \
    X(EXEC, "exec")                                        \
    X(INTERPRETER, "exec (program found, its ELF interpreter or script interpreter is not in the jail)") \
    X(AGENT, "start the sandbox's agent")                 \
    /* init, once the program runs (init.c) */             \
    X(DROP_INIT, "drop init's privileges")                 \
    X(REAP_PROGRAM, "reap the program")                    \
    X(REPORT_EXIT, "report the exit status")

enum aiogaol_step {
#define AIOGAOL_STEP_ENUM(name, text) AIOGAOL_STEP_##name,
    AIOGAOL_STEPS(AIOGAOL_STEP_ENUM)
#undef AIOGAOL_STEP_ENUM
    AIOGAOL_STEP_COUNT
};

/* Record kinds on the error pipe and on the lifeline socket. */
enum aiogaol_record_kind {
    AIOGAOL_RECORD_PID = 1,     /* value: host PID of the jail's init */
    AIOGAOL_RECORD_FAILURE = 2, /* step, err, detail: a setup step failed */
    AIOGAOL_RECORD_EXIT = 3,    /* value: wait status of the program (from init) */
    AIOGAOL_RECORD_TIME = 4,    /* step reached; detail: its CLOCK_MONOTONIC time, uint64 ns (--timings) */
};

#define AIOGAOL_DETAIL_MAX 496

/* 512 bytes: below PIPE_BUF, so each record is written atomically even with several writers. */
struct aiogaol_record {
    int32_t kind;
    int32_t step;
    int32_t err;
    int32_t value;
    char detail[AIOGAOL_DETAIL_MAX];
};

const char *aiogaol_step_name(int step);
int aiogaol_record_size(void);

/* Entry point of the helper executable: one jail from its arguments, or with "--serve FD" the
 * spawner, which starts one jail per request read from the socket FD until EOF (see spawner.c). */
int aiogaol_helper_main(int argc, char **argv, char **envp);
int aiogaol_serve(int sock);

/* Server side: start the helper with the given stdio and kept fds, signals reset, via posix_spawn.
 * argv and envp come as blobs of argc/envc NUL-terminated strings.  fd_map holds pairs (from, to); a
 * pair with from == to only clears FD_CLOEXEC.  Returns the helper's PID, or -errno. */
int aiogaol_spawn_helper(const char *path, const char *argblob, size_t arglen, int argc,
                         const char *envblob, size_t envlen, int envc, const int *fd_map, int n_pairs);

/* Probes: 0 or the errno of unshare(CLONE_NEWUSER); the Landlock ABI or -errno. */
int aiogaol_probe_userns(void);
int aiogaol_landlock_abi(void);

/* PythonPool's warm interpreter (zygote.c): the steps of a jail taken in-process by its forks, called
 * through the cffi module in the order zygote.c describes. */
int aiogaol_zygote_seal(void);
int aiogaol_raise_nice(int nice);
int aiogaol_zygote_clone(int argc, char **argv, const char *filter, int filter_len, int sock, int err,
                         int sync_r, int sync_w, int *k_out);
void aiogaol_zygote_init_wait(int program, int to_program, int host);
void aiogaol_zygote_init_build(void);
void aiogaol_zygote_init_enter(void);
void aiogaol_zygote_init_job(int report_fd);
void aiogaol_zygote_init_run(int program, int to_program, int payload);
void aiogaol_zygote_program_walls(int hold);
void aiogaol_zygote_program_ready(int hold);
int aiogaol_zygote_program_receive(int hold);
void aiogaol_zygote_program_enter(int report_fd);

#endif
