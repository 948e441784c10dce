/*
 * The C core's internal header: what the files of aiogaol/_native share (jail.h is the public one, of
 * the cffi module and the helper).  Each process role has its file:
 *
 *   wire.c     records, fail(), timing marks, parsing the helper's arguments and the spawner's requests
 *   mounts.c   the jail builder: the plan's mounts, in init
 *   init.c     init, PID 1 of the jail: fds, niceness, loopback, privilege drop, supervision, exit status
 *   program.c  the program launcher, PID 2: identity, rlimits, signals, NNP, caps, Landlock, seccomp, exec
 *   spawner.c  the spawner: one init per request, waiting inits, hand-over, the mount-table watch
 *   zygote.c   the same steps taken in-process by forks of PythonPool's warm interpreter
 *   server.c   the server's side: posix_spawn of the helper, probes
 *   agent.c    the sandbox's resident: a sandbox's PID 2 in place of a program (agent.h, its wire)
 *
 * Each process runs single-threaded code that only fails through fail() (wire.c): one record naming the
 * step (AIOGAOL_STEPS, in jail.h, numbered as docs/spawn.md numbers them), the errno and the path.
 */
#ifndef AIOGAOL_CORE_H
#define AIOGAOL_CORE_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "jail.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/openat2.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <spawn.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <dirent.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <unistd.h>

#ifndef SECBIT_NOROOT
#define SECBIT_NOROOT (1 << 0)
#define SECBIT_NOROOT_LOCKED (1 << 1)
#define SECBIT_NO_SETUID_FIXUP (1 << 2)
#define SECBIT_NO_SETUID_FIXUP_LOCKED (1 << 3)
#define SECBIT_KEEP_CAPS_LOCKED (1 << 5)
#define SECBIT_NO_CAP_AMBIENT_RAISE (1 << 6)
#define SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED (1 << 7)
#endif
#ifndef PR_CAP_AMBIENT
#define PR_CAP_AMBIENT 47
#define PR_CAP_AMBIENT_CLEAR_ALL 4
#endif
#ifndef SECCOMP_FILTER_FLAG_TSYNC
#define SECCOMP_FILTER_FLAG_TSYNC 1
#endif

/* Landlock, declared here because Debian 12's kernel headers predate network rules and scopes. */
#define LL_CREATE_RULESET_VERSION (1U << 0)
#define LL_RULE_PATH_BENEATH 1
#define LL_RULE_NET_PORT 2
struct ll_ruleset_attr {
    uint64_t handled_access_fs;
    uint64_t handled_access_net;
    uint64_t scoped;
};
struct ll_path_beneath_attr {
    uint64_t allowed_access;
    int32_t parent_fd;
} __attribute__((packed));
struct ll_net_port_attr {
    uint64_t allowed_access;
    uint64_t port;
};
#ifndef SYS_landlock_create_ruleset
#define SYS_landlock_create_ruleset 444
#define SYS_landlock_add_rule 445
#define SYS_landlock_restrict_self 446
#endif

/* The plan, as parsed from the helper's arguments (wire.c) */

enum op_kind { OP_DIR, OP_SYMLINK, OP_RO, OP_RW, OP_TMPFS, OP_PROC, OP_DEV, OP_MASK, OP_RO_SELF, OP_SHM, OP_DEVPTS };

struct op {
    enum op_kind kind;
    const char *a; /* source, or symlink target */
    const char *b; /* destination inside the jail */
    unsigned long long size;
    unsigned int mode;
    uint64_t dev, ino; /* OP_RO/OP_RW: the source the profile resolved (see bind_op) */
};

#define MAX_OPS 1024
#define MAX_KEEP 256
#define MAX_RLIMITS 16
#define MAX_LL_PATHS 256
#define MAX_LL_PORTS 64

struct plan {
    int err_fd; /* the error pipe, as numbered in init (--err) */
    int timings; /* --timings: a TIME record at each step boundary (a diagnostic) */
    int umask;   /* --umask: the program's (the server's at the spawn), or -1 to keep ours */
    int nice;    /* --nice: the jail's niceness (only ever raised), or -1 to keep ours */
    int lifeline_fd;
    int seccomp_fd;
    int cgroup_fd; /* O_DIRECTORY fd of a cgroup v2 directory that init is created in, or -1 */
    long inside_uid, inside_gid;
    int unshare_net;
    int loopback;      /* --loopback: bring up lo in the jail's own network namespace */
    int no_namespaces; /* the fallback: Landlock, seccomp, no_new_privs and rlimits only */
    int agent_fd;      /* --agent FD IDLE_MS: a sandbox, whose resident agent (agent.c) runs in place of */
    long agent_idle;   /* the program on socket FD (-1: a program); IDLE_MS > 0: its idle timeout */
    uint64_t deadline_ms; /* --deadline MS: init ends the jail this long after it starts (0: never) */
    const char *hostname;
    unsigned long long root_size;
    const char *cwd;
    int landlock;
    struct ll_ruleset_attr ll_attr;
    char **argv; /* program and its arguments */
    char **envp;
    int n_keep, n_ops, n_rlimits, n_ll_paths, n_ll_ports; /* the tables' lengths */
    /* The tables, last: parse_args zeroes only what comes before them (PLAN_HEAD) and sets every field
     * of each entry it adds, and nothing reads an entry past its table's length.  Zeroing the whole
     * plan (68 KiB) at every request wrote 17 pages that the last init cloned from the spawner still
     * shared: each a copy-on-write fault, in the spawner and again in a waiting init parsing its request. */
    int keep[MAX_KEEP];
    struct op ops[MAX_OPS];
    struct {
        int resource;
        unsigned long long soft, hard;
    } rlimits[MAX_RLIMITS];
    struct {
        uint64_t access;
        const char *path;
        uint64_t dev, ino;
    } ll_paths[MAX_LL_PATHS];
    struct {
        uint64_t access;
        uint64_t port;
    } ll_ports[MAX_LL_PORTS];
};
#define PLAN_HEAD offsetof(struct plan, keep) /* the part of the plan before its tables */

#define MAX_REQ_FDS 253 /* SCM_MAX_FD: the most fds one request can carry */
#define JAIL_NAMESPACES (CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWCGROUP)

/* The spawner's reports to the server on its socket (int32 kind, int32 pid): see spawner.c. */
enum { REPORT_WAITING = 1, REPORT_DISCARDED = 2 };

/* ---- wire.c: records, failures, marks, the plan and the requests it is parsed from ---------------- */
extern struct plan plan;
extern int switch_identity;               /* the program runs as --uid/--gid, not as the caller */
extern int err_fd;                        /* the error pipe, where fail() reports; -1: nowhere */
extern jmp_buf *fail_escape;              /* the spawner's request loop: fail() returns there */
extern struct sock_filter init_insns[256]; /* init's own filter (--init-filter) */
extern unsigned short init_len;
extern int req_from[MAX_REQ_FDS], req_to[MAX_REQ_FDS], req_n; /* a request's fds: as received, wanted */
extern int req_large;                     /* the request came in a memfd (see recv_request) */

void __attribute__((noreturn)) fail(int step, int err, const char *detail);
void send_record(int fd, int kind, int step, int err, int value, const char *detail);
ssize_t send_fds(int sock, const void *data, size_t len, const int *fds, int n);
void report(int sock, int kind, pid_t pid);
uint64_t now_ns(void);
void mark(int step);
void mark_at(int step, uint64_t ns);
void mark_lifeline(int step);
void parse_args(int argc, char **argv, char **envp);
unsigned long long parse_num(const char *s, int base);
int recv_request(int sock, char **buf, size_t *cap, size_t *len, int *truncated);
void parse_request(const char *buf, size_t len);
const char *split_blob(const char *blob, const char *end, int count, char **vec);
size_t str_len(const char *s);
void copy_str(char *dst, size_t cap, const char *src);
char *fmt_ulong(char *p, unsigned long v);
int close_all_except(int *keep, int n);

/* ---- mounts.c: the jail builder --------------------------------------------------------------- */
extern int prebuilt;                      /* this much of the plan's ops is done already */

int open_nofollow(int dirfd, const char *path, int flags, uint64_t resolve);
void __attribute__((noreturn)) fail_open(int step, int changed_step, int err, const char *path);
int plan_starts_standard(void);
int plan_fits_kernel_part(void);
void keep_kernel_part(void);
void build_kernel_part(unsigned long long root_size);
void build_mounts(void);
void build_jail(void);

/* ---- init.c: PID 1 ---------------------------------------------------------------------------- */
extern pid_t init_pid;                    /* init's PID as the program sees it (the fallback's check) */
extern int join_cgroup_late;              /* cloned without clone3: moved into its cgroup, then unshares */
extern int sync_fds[2];

void place_fds(void);
void init_fds(int also);
int raise_nice(int nice);
void apply_nice(void);
pid_t host_pid(void);
void __attribute__((noreturn)) init_child(void);
void __attribute__((noreturn)) run_init(void);
void loopback_up(void);
extern int loopback_done;
void drop_init(pid_t program);
void kill_jail(pid_t program);
void add_usage(uint64_t *figures, const struct rusage *ru);
int supervise(pid_t child, int sfd, uint64_t *figures);
void reap_jail(pid_t child, uint64_t *figures);

/* ---- program.c: PID 2 ------------------------------------------------------------------------- */
void __attribute__((noreturn)) run_program(void);
extern int bounds_dropped;                /* limit_capabilities done (in init, before the clone) */
void limit_capabilities(void);
void apply_landlock(void);
void drop_capabilities(void);
void take_identity(int init);
void program_rlimits(void);
void program_session(int warm);
void program_walls(int warm, int hold);
void program_own_session(void);
void __attribute__((noreturn)) exec_program(void);
extern struct sock_filter seccomp_insns[BPF_MAXINSNS];
size_t read_seccomp(void);

/* ---- spawner.c: the spawner ------------------------------------------------------------------ */
void resolve_identity(uid_t uid, gid_t gid);

#endif
