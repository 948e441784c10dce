/*
 * The jail: carried out by a small helper executable, never in a fork of the Python server.
 *
 * Process shape (gaol's, minus its traps):
 *
 *   server ──posix_spawn, once──▶ spawner: aiogaol-jail --serve FD (host namespaces, kept)
 *           ──one request per jail (args + fds over FD)──▶ spawner
 *                            clone(CLONE_PARENT | user, pid, mount, ipc, uts, cgroup[, net])
 *                            write init's host PID on the error pipe; write its id maps; let it go
 *                                                     init: PID 1 of the new namespaces, the server's child;
 *                                                           build the jail, fork the program, supervise
 *                                                     program (PID 2): drop everything, exec
 *
 * After a request, once the last jail's init has exited, the spawner also makes the next default jail's
 * init ahead of time ("waiting init", below) and hands it the next request that fits.
 *
 * Without --serve the same executable is a one-shot helper: one jail from its argv, then _exit (the
 * server uses it for what the spawner does not take: cgroup placement, oversized requests).
 *
 * CLONE_PARENT makes init the server's own child, so the server reaps it through a pidfd without ever
 * being a subreaper or calling waitpid(-1).  Init reaps the orphans of the jail, forwards signals to the
 * program and reports the program's exact wait status on the lifeline socket, because PID 1 of a
 * namespace cannot die of its own signal.  The lifeline (a socket whose other end only the server holds)
 * ties the jail to the server's life without PR_SET_PDEATHSIG, which fires when a *thread* exits.
 *
 * Every step is one numbered entry of AIOGAOL_STEPS; any failure goes through fail(), which writes one
 * record (step, errno, detail) on the error pipe and exits (in the spawner, returns to its request loop).
 * EOF on that pipe means exec succeeded.
 */
#define _GNU_SOURCE
#include "jail.h"
#include "agent.h"

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

/* ------------------------------------------------------------------------------------------------ */
/* Names and reporting                                                                             */

static const char *const step_names[] = {
#define AIOGAOL_STEP_NAME(name, text) text,
    AIOGAOL_STEPS(AIOGAOL_STEP_NAME)
#undef AIOGAOL_STEP_NAME
};

const char *aiogaol_step_name(int step)
{
    if (step < 0 || step >= AIOGAOL_STEP_COUNT)
        return "unknown step";
    return step_names[step];
}

int aiogaol_record_size(void) { return (int)sizeof(struct aiogaol_record); }

static int err_fd = -1;
/* Set by the spawner while it handles one request: a failure then returns to its loop instead of
 * ending it.  Cleared in every process it clones, where fail() ends the process as usual. */
static jmp_buf *fail_escape;

static size_t str_len(const char *s)
{
    size_t n = 0;
    while (s && s[n])
        n++;
    return n;
}

static void copy_str(char *dst, size_t cap, const char *src)
{
    size_t i = 0;
    if (cap == 0)
        return;
    for (; src && src[i] && i + 1 < cap; i++)
        dst[i] = src[i];
    dst[i] = '\0';
}

static void write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;
        p += n;
        len -= (size_t)n;
    }
}

static void send_record(int fd, int kind, int step, int err, int value, const char *detail)
{
    struct aiogaol_record rec;
    memset(&rec, 0, sizeof rec);
    rec.kind = kind;
    rec.step = step;
    rec.err = err;
    rec.value = value;
    copy_str(rec.detail, sizeof rec.detail, detail);
    write_all(fd, &rec, sizeof rec);
}

/* The one failure path: a record on the error pipe, then _exit.  errno is captured by the caller. */
static void __attribute__((noreturn)) fail(int step, int err, const char *detail)
{
    /* Paths are reported as the jail will see them, not as the staging tree names them. */
    if (detail && strncmp(detail, "/newroot/", 9) == 0)
        detail += 8;
    else if (detail && strncmp(detail, "/oldroot/", 9) == 0)
        detail += 8;
    if (err_fd >= 0)
        send_record(err_fd, AIOGAOL_RECORD_FAILURE, step, err, 0, detail);
    if (fail_escape)
        longjmp(*fail_escape, 1);
    _exit(127);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* With --timings, when a step was reached: the server lines these up with its own clock (the same
 * CLOCK_MONOTONIC; no time namespace is made) to say where a spawn's time goes. */
static void mark_at(int step, uint64_t ns);
static void mark(int step) { mark_at(step, now_ns()); }
static pid_t host_pid(void);

/* ------------------------------------------------------------------------------------------------ */
/* The plan, as parsed from the helper's arguments                                                  */

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
    int keep[MAX_KEEP];
    int n_keep;
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
    struct op ops[MAX_OPS];
    int n_ops;
    struct {
        int resource;
        unsigned long long soft, hard;
    } rlimits[MAX_RLIMITS];
    int n_rlimits;
    int landlock;
    struct ll_ruleset_attr ll_attr;
    struct {
        uint64_t access;
        const char *path;
        uint64_t dev, ino;
    } ll_paths[MAX_LL_PATHS];
    int n_ll_paths;
    struct {
        uint64_t access;
        uint64_t port;
    } ll_ports[MAX_LL_PORTS];
    int n_ll_ports;
    char **argv; /* program and its arguments */
    char **envp;
};

static struct plan plan;
static int switch_identity;

static void time_record(struct aiogaol_record *rec, int step, uint64_t ns)
{
    memset(rec, 0, sizeof *rec);
    rec->kind = AIOGAOL_RECORD_TIME;
    rec->step = step;
    memcpy(rec->detail, &ns, sizeof ns);
}

static void mark_at(int step, uint64_t ns)
{
    struct aiogaol_record rec;
    if (!plan.timings || err_fd < 0)
        return;
    time_record(&rec, step, ns);
    write_all(err_fd, &rec, sizeof rec);
}

/* Init's marks after the program's exec, when the error pipe is gone: on the lifeline, before EXIT. */
static void mark_lifeline(int step)
{
    struct aiogaol_record rec;
    if (!plan.timings || plan.lifeline_fd < 0)
        return;
    time_record(&rec, step, now_ns());
    send(plan.lifeline_fd, &rec, sizeof rec, MSG_NOSIGNAL);
}

static unsigned long long parse_num(const char *s, int base)
{
    char *end = NULL;
    unsigned long long v;
    if (!s || !*s)
        fail(AIOGAOL_STEP_ARGS, EINVAL, "missing number");
    errno = 0;
    v = strtoull(s, &end, base);
    if (errno || *end)
        fail(AIOGAOL_STEP_ARGS, EINVAL, s);
    return v;
}

/* Init's own seccomp filter (--init-filter HEX), compiled by the server (aiogaol/_init_filter.py) and
 * loaded by init once the program has exec'd (see drop_init). */
static struct sock_filter init_insns[256];
static unsigned short init_len;

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

static void parse_init_filter(const char *hex)
{
    size_t n = str_len(hex), i;
    unsigned char *out = (unsigned char *)init_insns;
    if (n == 0 || n % 16 != 0 || n / 2 > sizeof init_insns)
        fail(AIOGAOL_STEP_ARGS, EINVAL, "--init-filter size");
    for (i = 0; i < n; i += 2) {
        int hi = hex_digit(hex[i]), lo = hex_digit(hex[i + 1]);
        if (hi < 0 || lo < 0)
            fail(AIOGAOL_STEP_ARGS, EINVAL, "--init-filter");
        out[i / 2] = (unsigned char)(hi * 16 + lo);
    }
    init_len = (unsigned short)(n / 16);
}

static int req_n; /* fds received with a request (see place_fds); 0 in the one-shot helper */

static void parse_args(int argc, char **argv, char **envp)
{
    int i = 1;
    memset(&plan, 0, sizeof plan);
    plan.err_fd = -1;
    plan.umask = -1;
    plan.nice = -1;
    plan.lifeline_fd = -1;
    plan.seccomp_fd = -1;
    plan.cgroup_fd = -1;
    plan.agent_fd = -1;
    plan.inside_uid = -1;
    plan.inside_gid = -1;
    plan.cwd = "/";
    plan.hostname = "aiogaol";
    plan.root_size = 1 << 20;
    plan.envp = envp;
    init_len = 0;

#define NEED(n)                                                                                    \
    do {                                                                                           \
        if (i + (n) >= argc)                                                                       \
            fail(AIOGAOL_STEP_ARGS, EINVAL, argv[i]);                                              \
    } while (0)
#define OP(k, A, B, S, M)                                                                          \
    do {                                                                                           \
        if (plan.n_ops >= MAX_OPS)                                                                 \
            fail(AIOGAOL_STEP_ARGS, E2BIG, "too many mounts");                                     \
        plan.ops[plan.n_ops].kind = (k);                                                           \
        plan.ops[plan.n_ops].a = (A);                                                              \
        plan.ops[plan.n_ops].b = (B);                                                              \
        plan.ops[plan.n_ops].size = (S);                                                           \
        plan.ops[plan.n_ops].mode = (M);                                                           \
        plan.n_ops++;                                                                              \
    } while (0)

    for (; i < argc; i++) {
        const char *o = argv[i];
        if (strcmp(o, "--") == 0) {
            i++;
            break;
        } else if (strcmp(o, "--err") == 0) {
            NEED(1);
            plan.err_fd = (int)parse_num(argv[++i], 10);
            /* The one-shot helper (its fds are at their numbers): later argument errors are reported.  Not
             * a waiting init, whose fds came over its socket (req_n) and are not at their numbers until
             * place_fds: its failures go to the error pipe as received, req_from[0]. */
            if (!fail_escape && req_n == 0)
                err_fd = plan.err_fd;
        } else if (strcmp(o, "--lifeline") == 0) {
            NEED(1);
            plan.lifeline_fd = (int)parse_num(argv[++i], 10);
        } else if (strcmp(o, "--seccomp-fd") == 0) {
            NEED(1);
            plan.seccomp_fd = (int)parse_num(argv[++i], 10);
        } else if (strcmp(o, "--cgroup-fd") == 0) {
            NEED(1);
            plan.cgroup_fd = (int)parse_num(argv[++i], 10);
        } else if (strcmp(o, "--keep") == 0) {
            NEED(1);
            if (plan.n_keep >= MAX_KEEP)
                fail(AIOGAOL_STEP_ARGS, E2BIG, "too many pass_fds");
            plan.keep[plan.n_keep++] = (int)parse_num(argv[++i], 10);
        } else if (strcmp(o, "--uid") == 0) {
            NEED(1);
            plan.inside_uid = (long)parse_num(argv[++i], 10);
        } else if (strcmp(o, "--gid") == 0) {
            NEED(1);
            plan.inside_gid = (long)parse_num(argv[++i], 10);
        } else if (strcmp(o, "--agent") == 0) {
            NEED(2);
            plan.agent_fd = (int)parse_num(argv[++i], 10);
            plan.agent_idle = (long)parse_num(argv[++i], 10);
        } else if (strcmp(o, "--deadline") == 0) {
            NEED(1);
            plan.deadline_ms = parse_num(argv[++i], 10);
        } else if (strcmp(o, "--timings") == 0) {
            plan.timings = 1;
        } else if (strcmp(o, "--no-namespaces") == 0) {
            plan.no_namespaces = 1;
        } else if (strcmp(o, "--unshare-net") == 0) {
            plan.unshare_net = 1;
        } else if (strcmp(o, "--loopback") == 0) {
            plan.loopback = 1;
        } else if (strcmp(o, "--init-filter") == 0) {
            NEED(1);
            parse_init_filter(argv[++i]);
        } else if (strcmp(o, "--hostname") == 0) {
            NEED(1);
            plan.hostname = argv[++i];
        } else if (strcmp(o, "--root-size") == 0) {
            NEED(1);
            plan.root_size = parse_num(argv[++i], 10);
        } else if (strcmp(o, "--nice") == 0) {
            NEED(1);
            plan.nice = (int)parse_num(argv[++i], 10);
            if (plan.nice > 19)
                fail(AIOGAOL_STEP_ARGS, EINVAL, "--nice above 19");
        } else if (strcmp(o, "--umask") == 0) {
            NEED(1);
            plan.umask = (int)parse_num(argv[++i], 8);
        } else if (strcmp(o, "--chdir") == 0) {
            NEED(1);
            plan.cwd = argv[++i];
        } else if (strcmp(o, "--dir") == 0) {
            NEED(1);
            OP(OP_DIR, NULL, argv[i + 1], 0, 0755);
            i += 1;
        } else if (strcmp(o, "--symlink") == 0) {
            NEED(2);
            OP(OP_SYMLINK, argv[i + 1], argv[i + 2], 0, 0);
            i += 2;
        } else if (strcmp(o, "--ro") == 0 || strcmp(o, "--rw") == 0) {
            /* source, destination, and the st_dev and st_ino the source must still have */
            NEED(4);
            OP(o[3] == 'o' ? OP_RO : OP_RW, argv[i + 1], argv[i + 2], 0, 0);
            plan.ops[plan.n_ops - 1].dev = parse_num(argv[i + 3], 10);
            plan.ops[plan.n_ops - 1].ino = parse_num(argv[i + 4], 10);
            i += 4;
        } else if (strcmp(o, "--tmpfs") == 0) {
            NEED(3);
            OP(OP_TMPFS, NULL, argv[i + 1], parse_num(argv[i + 2], 10),
               (unsigned int)parse_num(argv[i + 3], 8));
            i += 3;
        } else if (strcmp(o, "--proc") == 0) {
            NEED(1);
            OP(OP_PROC, NULL, argv[i + 1], 0, 0);
            i += 1;
        } else if (strcmp(o, "--dev") == 0) {
            NEED(1);
            OP(OP_DEV, NULL, argv[i + 1], 0, 0);
            i += 1;
        } else if (strcmp(o, "--mask") == 0) {
            NEED(1);
            OP(OP_MASK, NULL, argv[i + 1], 0, 0);
            i += 1;
        } else if (strcmp(o, "--ro-self") == 0) {
            NEED(1);
            OP(OP_RO_SELF, NULL, argv[i + 1], 0, 0);
            i += 1;
        } else if (strcmp(o, "--shm") == 0) {
            NEED(2);
            OP(OP_SHM, NULL, argv[i + 1], parse_num(argv[i + 2], 10), 01777);
            i += 2;
        } else if (strcmp(o, "--devpts") == 0) {
            NEED(1);
            OP(OP_DEVPTS, NULL, argv[i + 1], 0, 0);
            i += 1;
        } else if (strcmp(o, "--rlimit") == 0) {
            NEED(3);
            if (plan.n_rlimits >= MAX_RLIMITS)
                fail(AIOGAOL_STEP_ARGS, E2BIG, "too many rlimits");
            plan.rlimits[plan.n_rlimits].resource = (int)parse_num(argv[i + 1], 10);
            plan.rlimits[plan.n_rlimits].soft = parse_num(argv[i + 2], 10);
            plan.rlimits[plan.n_rlimits].hard = parse_num(argv[i + 3], 10);
            plan.n_rlimits++;
            i += 3;
        } else if (strcmp(o, "--landlock") == 0) {
            /* handled fs access, handled net access, scopes */
            NEED(3);
            plan.landlock = 1;
            plan.ll_attr.handled_access_fs = parse_num(argv[i + 1], 10);
            plan.ll_attr.handled_access_net = parse_num(argv[i + 2], 10);
            plan.ll_attr.scoped = parse_num(argv[i + 3], 10);
            i += 3;
        } else if (strcmp(o, "--ll-path") == 0) {
            /* access, path, and the st_dev and st_ino it must have (0 0: no check) */
            NEED(4);
            if (plan.n_ll_paths >= MAX_LL_PATHS)
                fail(AIOGAOL_STEP_ARGS, E2BIG, "too many landlock paths");
            plan.ll_paths[plan.n_ll_paths].access = parse_num(argv[i + 1], 10);
            plan.ll_paths[plan.n_ll_paths].path = argv[i + 2];
            plan.ll_paths[plan.n_ll_paths].dev = parse_num(argv[i + 3], 10);
            plan.ll_paths[plan.n_ll_paths].ino = parse_num(argv[i + 4], 10);
            plan.n_ll_paths++;
            i += 4;
        } else if (strcmp(o, "--ll-port") == 0) {
            NEED(2);
            if (plan.n_ll_ports >= MAX_LL_PORTS)
                fail(AIOGAOL_STEP_ARGS, E2BIG, "too many landlock ports");
            plan.ll_ports[plan.n_ll_ports].access = parse_num(argv[i + 1], 10);
            plan.ll_ports[plan.n_ll_ports].port = parse_num(argv[i + 2], 10);
            plan.n_ll_ports++;
            i += 2;
        } else {
            fail(AIOGAOL_STEP_ARGS, EINVAL, o);
        }
    }
#undef NEED
#undef OP
    if (i >= argc)
        fail(AIOGAOL_STEP_ARGS, EINVAL, "no program");
    plan.argv = &argv[i];
}

/* ------------------------------------------------------------------------------------------------ */
/* Small helpers                                                                                    */

static char pathbuf[PATH_MAX];

static const char *join(char *buf, const char *prefix, const char *path)
{
    size_t a = str_len(prefix), b = str_len(path);
    if (a + b + 1 > PATH_MAX)
        fail(AIOGAOL_STEP_ARGS, ENAMETOOLONG, path);
    memcpy(buf, prefix, a);
    memcpy(buf + a, path, b + 1);
    return buf;
}

static int cmp_int(const void *x, const void *y)
{
    int a = *(const int *)x, b = *(const int *)y;
    return (a > b) - (a < b);
}

/* Close every fd from 3 up except those in keep (CPython's _close_range_except, with close_range). */
static int close_all_except(int *keep, int n)
{
    int lo = 3, i;
    qsort(keep, (size_t)n, sizeof *keep, cmp_int);
    for (i = 0; i < n; i++) {
        if (keep[i] < lo)
            continue;
        if (keep[i] > lo && syscall(SYS_close_range, lo, keep[i] - 1, 0) < 0)
            return -1;
        lo = keep[i] + 1;
    }
    return (int)syscall(SYS_close_range, lo, ~0U, 0);
}

static void write_file(int step, const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    ssize_t n, len = (ssize_t)str_len(text);
    if (fd < 0)
        fail(step, errno, path);
    n = write(fd, text, (size_t)len);
    if (n != len)
        fail(step, n < 0 ? errno : EIO, path);
    close(fd);
}

static char *fmt_ulong(char *p, unsigned long v)
{
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        *p++ = tmp[--n];
    return p;
}

/* "inside outside 1\n" lines.  A single line mapping the caller's own id is what an unprivileged
 * caller may write; a privileged one adds a second identity for the program (see --uid). */
static void write_id_map(int step, const char *path, unsigned long caller, unsigned long program)
{
    char buf[128], *p = buf;
    p = fmt_ulong(p, caller == program ? caller : 0);
    *p++ = ' ';
    p = fmt_ulong(p, caller);
    memcpy(p, " 1\n", 3);
    p += 3;
    if (caller != program) {
        p = fmt_ulong(p, program);
        *p++ = ' ';
        p = fmt_ulong(p, program);
        memcpy(p, " 1\n", 3);
        p += 3;
    }
    *p = '\0';
    write_file(step, path, buf);
}

/* Paths by handle.  Every path the jail is built from or onto is walked without following a symlink in
 * any component (openat2 RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS): a directory another jail may
 * write (a read-write bind) can hold a symlink by the time this jail is built, and following it would
 * bind, create or mount somewhere the profile never named (docs/security.md, "Binds by handle"). */
static int open_nofollow(int dirfd, const char *path, int flags, uint64_t resolve)
{
    struct open_how how;
    int fd, tries = 0;
    memset(&how, 0, sizeof how);
    how.flags = (uint64_t)(unsigned int)(flags | O_CLOEXEC);
    how.resolve = RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | resolve;
    /* EAGAIN: a rename raced a RESOLVE_BENEATH lookup; retry a few times, then report it. */
    do
        fd = (int)syscall(SYS_openat2, dirfd, path, &how, sizeof how);
    while (fd < 0 && (errno == EINTR || (errno == EAGAIN && ++tries < 64)));
    return fd;
}

/* The failure of a no-follow open: a symlink met on the way (ELOOP, or EXDEV from RESOLVE_BENEATH) is
 * a path that changed since the profile resolved it; a kernel without openat2 cannot build the jail as
 * written (refused, never done by following links). */
static void __attribute__((noreturn)) fail_open(int step, int changed_step, int err, const char *path)
{
    if (err == ENOSYS)
        fail(step, ENOSYS, "openat2 (Linux 5.6), needed to open paths without following symlinks");
    if (err == ELOOP || err == EXDEV)
        fail(changed_step, ELOOP, path);
    fail(step, err, path);
}

/* An O_PATH fd of the directory path (absolute, in init's current root), each missing component made
 * with mode; a component that is a symlink fails the step. */
static int open_dir_p(int step, const char *path, unsigned int mode)
{
    char buf[PATH_MAX];
    size_t i = 0, n = str_len(path);
    int dfd;
    if (n + 1 > sizeof buf)
        fail(step, ENAMETOOLONG, path);
    memcpy(buf, path, n + 1);
    dfd = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        fail(step, errno, "/");
    while (i < n) {
        char *comp;
        int fd;
        while (buf[i] == '/')
            i++;
        if (i >= n)
            break;
        comp = buf + i;
        while (i < n && buf[i] != '/')
            i++;
        buf[i] = '\0';
        if (mkdirat(dfd, comp, mode) < 0 && errno != EEXIST) {
            int e = errno;
            buf[i] = i < n ? '/' : '\0';
            fail(step, e, path);
        }
        fd = open_nofollow(dfd, comp, O_PATH | O_DIRECTORY, RESOLVE_BENEATH);
        if (fd < 0)
            fail_open(step, AIOGAOL_STEP_TARGET_CHANGED, errno, path);
        close(dfd);
        dfd = fd;
        if (i < n)
            buf[i++] = '/';
    }
    return dfd;
}

static void mkdir_p(const char *path, unsigned int mode)
{
    close(open_dir_p(AIOGAOL_STEP_MKDIR, path, mode));
}

/* The directory holding path's last component, opened as open_dir_p does, and that component. */
static int open_parent(int step, const char *path, char *leaf, size_t cap)
{
    char buf[PATH_MAX];
    size_t n = str_len(path), k;
    int fd;
    if (n + 1 > sizeof buf)
        fail(step, ENAMETOOLONG, path);
    memcpy(buf, path, n + 1);
    while (n > 1 && buf[n - 1] == '/')
        buf[--n] = '\0';
    k = n;
    while (k > 0 && buf[k - 1] != '/')
        k--;
    if (n - k + 1 > cap || k == n)
        fail(step, EINVAL, path);
    memcpy(leaf, buf + k, n - k + 1);
    buf[k] = '\0';
    fd = open_dir_p(step, k ? buf : "/", 0755);
    return fd;
}

/* An O_PATH fd of path (made an empty file if missing), reached without following symlinks. */
static int open_file(int step, const char *path)
{
    char leaf[NAME_MAX + 1];
    int dfd = open_parent(step, path, leaf, sizeof leaf), fd;
    fd = open_nofollow(dfd, leaf, O_PATH, RESOLVE_BENEATH);
    if (fd < 0 && errno == ENOENT) {
        if (mknodat(dfd, leaf, S_IFREG | 0644, 0) < 0 && errno != EEXIST)
            fail(step, errno, path);
        fd = open_nofollow(dfd, leaf, O_PATH, RESOLVE_BENEATH);
    }
    if (fd < 0)
        fail_open(step, AIOGAOL_STEP_TARGET_CHANGED, errno, path);
    close(dfd);
    return fd;
}

static void touch(int step, const char *path)
{
    close(open_file(step, path));
}

static void set_attr(const char *path, uint64_t set, unsigned int flags, const char *detail)
{
    struct mount_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.attr_set = set;
    if (syscall(SYS_mount_setattr, AT_FDCWD, path, flags, &attr, sizeof attr) < 0)
        fail(AIOGAOL_STEP_SETATTR, errno, detail);
}

/* ------------------------------------------------------------------------------------------------ */
/* Building the jail (in init, PID 1 of the new namespaces)                                          */

static const char *const devices[] = {"null", "zero", "full", "random", "urandom", "tty", NULL};

static void make_dev(const char *dst)
{
    const char *dir = join(pathbuf, "/newroot", dst);
    char node[PATH_MAX], src[PATH_MAX];
    int i;
    mkdir_p(dir, 0755);
    if (mount("tmpfs", dir, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=65536") < 0)
        fail(AIOGAOL_STEP_TMPFS, errno, dst);
    for (i = 0; devices[i]; i++) {
        size_t dl = str_len(dir), nl = str_len(devices[i]);
        if (dl + nl + 2 > sizeof node)
            fail(AIOGAOL_STEP_DEVICE, ENAMETOOLONG, dst);
        memcpy(node, dir, dl);
        node[dl] = '/';
        memcpy(node + dl + 1, devices[i], nl + 1);
        join(src, "/oldroot/dev/", devices[i]);
        touch(AIOGAOL_STEP_DEVICE, node);
        if (mount(src, node, NULL, MS_BIND, NULL) < 0)
            fail(AIOGAOL_STEP_DEVICE, errno, src + 8);
        set_attr(node, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC, 0, src + 8);
    }
    {
        static const char *const links[][2] = {{"/proc/self/fd", "fd"},
                                               {"/proc/self/fd/0", "stdin"},
                                               {"/proc/self/fd/1", "stdout"},
                                               {"/proc/self/fd/2", "stderr"}};
        for (i = 0; i < 4; i++) {
            size_t dl = str_len(dir), nl = str_len(links[i][1]);
            memcpy(node, dir, dl);
            node[dl] = '/';
            memcpy(node + dl + 1, links[i][1], nl + 1);
            if (symlink(links[i][0], node) < 0)
                fail(AIOGAOL_STEP_SYMLINK, errno, node + 8);
        }
    }
    /* Mount points for the jail's /dev/shm (--shm, or a Tmpfs("/dev/shm") rule) and its own devpts
     * (--devpts), empty and unwritable when the profile turns them off; /dev/ptmx is the devpts
     * instance's own ptmx, as with newinstance it must be (dangling when there is no devpts). */
    join(node, dir, "/shm");
    if (mkdir(node, 0755) < 0)
        fail(AIOGAOL_STEP_MKDIR, errno, node + 8);
    join(node, dir, "/pts");
    if (mkdir(node, 0755) < 0)
        fail(AIOGAOL_STEP_MKDIR, errno, node + 8);
    join(node, dir, "/ptmx");
    if (symlink("pts/ptmx", node) < 0)
        fail(AIOGAOL_STEP_SYMLINK, errno, node + 8);
    set_attr(dir, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC, 0, dst);
}

/* The host files and directories bound so far, in order: a jail built ahead of time tells the spawner
 * which, so that it is handed a request only while the host's paths still name those (see "full"). */
struct bound_inode {
    uint64_t dev, ino;
};
static struct bound_inode bound[MAX_OPS];
static int n_bound;

/* A bind, by handle: the source is opened under the host's tree without following any symlink and must
 * be the object the profile resolved (same st_dev and st_ino), the tree cloned from that fd (open_tree),
 * made read-only (for read rules), nosuid and nodev while still detached (mount_setattr with AT_RECURSIVE
 * reaches every submount and only sets flags, so flags the kernel locked stay), and moved onto a
 * destination that was reached without following a symlink either. */
static void bind_op(const struct op *op, const char *dst)
{
    struct stat st;
    struct mount_attr attr;
    const char *rel = op->a;
    int root, src, tree, to;
    while (*rel == '/')
        rel++;
    root = open("/oldroot", O_PATH | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    if (root < 0)
        fail(AIOGAOL_STEP_BIND, errno, "/oldroot");
    src = open_nofollow(root, *rel ? rel : ".", O_PATH, RESOLVE_BENEATH);
    if (src < 0)
        fail_open(AIOGAOL_STEP_BIND, AIOGAOL_STEP_BIND_CHANGED, errno, op->a);
    close(root);
    if (fstat(src, &st) < 0)
        fail(AIOGAOL_STEP_BIND, errno, op->a);
    if ((uint64_t)st.st_dev != op->dev || (uint64_t)st.st_ino != op->ino)
        fail(AIOGAOL_STEP_BIND_CHANGED, ESTALE, op->a);
    if (n_bound < MAX_OPS) {
        bound[n_bound].dev = (uint64_t)st.st_dev;
        bound[n_bound].ino = (uint64_t)st.st_ino;
        n_bound++;
    }
    tree = (int)syscall(SYS_open_tree, src, "", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE |
                                                AT_EMPTY_PATH);
    if (tree < 0)
        fail(AIOGAOL_STEP_BIND, errno, errno == ENOSYS ? "open_tree (Linux 5.2)" : op->a);
    close(src);
    memset(&attr, 0, sizeof attr);
    attr.attr_set = (op->kind == OP_RO ? MOUNT_ATTR_RDONLY : 0) | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    if (syscall(SYS_mount_setattr, tree, "", AT_EMPTY_PATH | AT_RECURSIVE, &attr, sizeof attr) < 0)
        fail(AIOGAOL_STEP_SETATTR, errno, op->a);
    to = S_ISDIR(st.st_mode) ? open_dir_p(AIOGAOL_STEP_MKDIR, dst, 0755) : open_file(AIOGAOL_STEP_BIND, dst);
    if (syscall(SYS_move_mount, tree, "", to, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) < 0)
        fail(AIOGAOL_STEP_BIND, errno, op->a);
    close(to);
    close(tree);
}

/* A tmpfs's options for op (OP_TMPFS, OP_SHM): "size=BYTES,mode=MODE", MODE in four octal digits. */
static const char *tmpfs_opts(char *opts, const struct op *op)
{
    char *p = opts;
    memcpy(p, "size=", 5);
    p = fmt_ulong(p + 5, (unsigned long)op->size);
    memcpy(p, ",mode=", 6);
    p += 6;
    *p++ = (char)('0' + ((op->mode >> 9) & 7));
    *p++ = (char)('0' + ((op->mode >> 6) & 7));
    *p++ = (char)('0' + ((op->mode >> 3) & 7));
    *p++ = (char)('0' + (op->mode & 7));
    *p = '\0';
    return opts;
}

/* Whether a path to mask (or bind read-only over itself) exists on this kernel: 0 for one it lacks,
 * skipped; any other failure fails the spawn, since an unmasked path would be a silent widening. */
static int present(const char *dst, struct stat *st, const char *detail)
{
    if (lstat(dst, st) == 0)
        return 1;
    if (errno != ENOENT)
        fail(AIOGAOL_STEP_MASK, errno, detail);
    return 0;
}

/* The first masked directory and file of this build, in /newroot (see OP_MASK); empty: none yet. */
static char mask_dir[PATH_MAX], mask_file[PATH_MAX];

static void run_op(const struct op *op)
{
    struct stat st;
    const char *dst = join(pathbuf, "/newroot", op->b);
    char opts[64];
    switch (op->kind) {
    case OP_DIR:
        mkdir_p(dst, op->mode);
        break;
    case OP_SYMLINK: {
        char leaf[NAME_MAX + 1];
        int dfd = open_parent(AIOGAOL_STEP_SYMLINK, dst, leaf, sizeof leaf);
        if (symlinkat(op->a, dfd, leaf) < 0 && errno != EEXIST)
            fail(AIOGAOL_STEP_SYMLINK, errno, op->b);
        close(dfd);
        break;
    }
    case OP_RO:
    case OP_RW:
        bind_op(op, dst);
        break;
    case OP_TMPFS:
        mkdir_p(dst, 0755);
        if (mount("tmpfs", dst, "tmpfs", MS_NOSUID | MS_NODEV, tmpfs_opts(opts, op)) < 0)
            fail(AIOGAOL_STEP_TMPFS, errno, op->b);
        break;
    case OP_PROC:
        mkdir_p(dst, 0555);
        if (mount("proc", dst, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
            fail(AIOGAOL_STEP_PROC, errno, op->b);
        break;
    case OP_DEV:
        make_dev(op->b);
        break;
    case OP_MASK:
        /* Docker's masked paths: a directory gets an empty read-only tmpfs, anything else the host's
         * /dev/null bound read-only (reads empty, writes EROFS).  A path this kernel lacks is skipped;
         * any other failure fails the spawn, since an unmasked path would be a silent widening. */
        if (!present(dst, &st, op->b))
            break;
        /* The first of each kind is made, the others are binds of it (a bind keeps the read-only flag
         * of its source mount): a bind costs less than a new tmpfs, or than a bind and a setattr. */
        if (S_ISDIR(st.st_mode)) {
            if (mask_dir[0]) {
                if (mount(mask_dir, dst, NULL, MS_BIND, NULL) < 0)
                    fail(AIOGAOL_STEP_MASK, errno, op->b);
            } else {
                if (mount("tmpfs", dst, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                          "size=4096,mode=0555") < 0)
                    fail(AIOGAOL_STEP_MASK, errno, op->b);
                copy_str(mask_dir, sizeof mask_dir, dst);
            }
        } else if (mask_file[0]) {
            if (mount(mask_file, dst, NULL, MS_BIND, NULL) < 0)
                fail(AIOGAOL_STEP_MASK, errno, op->b);
        } else {
            /* Not nodev: it is the null device, and reads of it must be empty, not EACCES. */
            if (mount("/oldroot/dev/null", dst, NULL, MS_BIND, NULL) < 0)
                fail(AIOGAOL_STEP_MASK, errno, op->b);
            set_attr(dst, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC, 0, op->b);
            copy_str(mask_file, sizeof mask_file, dst);
        }
        break;
    case OP_RO_SELF:
        /* Docker's read-only paths: bound read-only over themselves (skipped where absent). */
        if (!present(dst, &st, op->b))
            break;
        if (mount(dst, dst, NULL, MS_BIND | MS_REC, NULL) < 0)
            fail(AIOGAOL_STEP_MASK, errno, op->b);
        set_attr(dst, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
                 AT_RECURSIVE, op->b);
        break;
    case OP_SHM:
        /* The jail's POSIX shared memory (multiprocessing's semaphores and queues): a size-capped
         * tmpfs of its own, sticky and world-writable like the host's, nosuid, nodev, noexec. */
        if (mount("tmpfs", dst, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, tmpfs_opts(opts, op)) < 0)
            fail(AIOGAOL_STEP_TMPFS, errno, op->b);
        break;
    case OP_DEVPTS:
        /* A devpts instance of the jail's own: its ptys only, none of the host's.  No gid= option, as
         * the tty group need not be mapped in the jail's user namespace. */
        if (mount("devpts", dst, "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620") < 0)
            fail(AIOGAOL_STEP_DEVPTS, errno, op->b);
        break;
    }
}

/* The part of every jail that no request changes: a private mount tree, the staging tmpfs and the
 * jail's root tmpfs of root_size bytes, pivoted into, then /proc and /dev (every namespaced plan starts
 * with those two steps).  An init made ahead of time does this before its request comes. */
static int prebuilt; /* this much of the plan's ops is done already (0; 2: /proc and /dev; or all) */

static void build_prefix(unsigned long long root_size)
{
    char opts[64], *p;

    mask_dir[0] = mask_file[0] = '\0';
    /* Nothing we mount may propagate back to the host. */
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
        fail(AIOGAOL_STEP_MAKE_PRIVATE, errno, "/");
    /* A staging tmpfs over /tmp (only in our mount namespace), as bubblewrap does: after the first
     * pivot the host's tree is at /oldroot and every source is read from there, so even rules for
     * paths under /tmp still see the host's /tmp. */
    if (mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0700,size=65536") < 0)
        fail(AIOGAOL_STEP_STAGING, errno, "/tmp");
    if (chdir("/tmp") < 0)
        fail(AIOGAOL_STEP_STAGING, errno, "/tmp");
    if (mkdir("newroot", 0755) < 0 || mkdir("oldroot", 0755) < 0)
        fail(AIOGAOL_STEP_STAGING, errno, "/tmp/newroot");
    p = opts;
    memcpy(p, "mode=0755,size=", 15);
    p = fmt_ulong(p + 15, (unsigned long)root_size);
    *p = '\0';
    if (mount("tmpfs", "newroot", "tmpfs", MS_NOSUID | MS_NODEV, opts) < 0)
        fail(AIOGAOL_STEP_STAGING, errno, "jail root");
    if (syscall(SYS_pivot_root, ".", "oldroot") < 0)
        fail(AIOGAOL_STEP_PIVOT_STAGING, errno, "/tmp");
    if (chdir("/") < 0)
        fail(AIOGAOL_STEP_PIVOT_STAGING, errno, "/");
}

/* Whether a plan starts the way a prebuilt jail did (see build_prefix). */
static int plan_starts_standard(void)
{
    return plan.n_ops >= 2 && plan.ops[0].kind == OP_PROC && strcmp(plan.ops[0].b, "/proc") == 0 &&
           plan.ops[1].kind == OP_DEV && strcmp(plan.ops[1].b, "/dev") == 0;
}

static void build_standard(unsigned long long root_size)
{
    struct op proc, dev;
    memset(&proc, 0, sizeof proc);
    memset(&dev, 0, sizeof dev);
    proc.kind = OP_PROC;
    proc.b = "/proc";
    dev.kind = OP_DEV;
    dev.b = "/dev";
    build_prefix(root_size);
    run_op(&proc);
    run_op(&dev);
    prebuilt = 2;
}

#define PREBUILT_ALL (-1) /* prebuilt: every op and the pivot into the jail are done already */

/* The plan's mounts (those not prebuilt), then the pivot into the jail. */
static void build_mounts(void)
{
    int i;

    if (!prebuilt)
        build_prefix(plan.root_size);
    for (i = prebuilt; i < plan.n_ops; i++)
        run_op(&plan.ops[i]);

    /* Nothing of the host's root stays reachable: detach it, then pivot into the jail and detach
     * the staging tmpfs under it too. */
    if (umount2("/oldroot", MNT_DETACH) < 0)
        fail(AIOGAOL_STEP_DETACH_OLDROOT, errno, "/oldroot");
    if (chdir("/newroot") < 0)
        fail(AIOGAOL_STEP_PIVOT_ROOT, errno, "/newroot");
    if (syscall(SYS_pivot_root, ".", ".") < 0)
        fail(AIOGAOL_STEP_PIVOT_ROOT, errno, "/newroot");
    if (umount2(".", MNT_DETACH) < 0)
        fail(AIOGAOL_STEP_DETACH_OLDROOT, errno, "staging");
    if (chdir("/") < 0)
        fail(AIOGAOL_STEP_PIVOT_ROOT, errno, "/");
    /* The jail's own root holds only the mount points: nothing may be created in it. */
    set_attr("/", MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 0, "/");
}

static void build_jail(void)
{
    if (prebuilt != PREBUILT_ALL)
        build_mounts();
    if (sethostname(plan.hostname, str_len(plan.hostname)) < 0)
        fail(AIOGAOL_STEP_HOSTNAME, errno, plan.hostname);
}

/* ------------------------------------------------------------------------------------------------ */
/* The program (PID 2): drop everything, exec                                                        */

static struct sock_filter seccomp_insns[BPF_MAXINSNS];

static size_t read_seccomp(void)
{
    size_t got = 0;
    ssize_t n;
    if (plan.seccomp_fd < 0)
        return 0;
    /* A pipe the server filled and closed before the spawn (a filter is at most 32 KiB, below a pipe's
     * capacity), so the server caches no fd; read to EOF.  More than BPF_MAXINSNS is refused. */
    for (;;) {
        n = read(plan.seccomp_fd, (char *)seccomp_insns + got, sizeof seccomp_insns - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
        if (got == sizeof seccomp_insns) {
            char extra;
            if (read(plan.seccomp_fd, &extra, 1) != 0)
                fail(AIOGAOL_STEP_SECCOMP, E2BIG, "filter size");
            break;
        }
    }
    if (n < 0)
        fail(AIOGAOL_STEP_SECCOMP, errno, "read filter");
    close(plan.seccomp_fd);
    if (got == 0 || got % sizeof(struct sock_filter) != 0)
        fail(AIOGAOL_STEP_SECCOMP, EINVAL, "filter size");
    return got / sizeof(struct sock_filter);
}

static void apply_landlock(void)
{
    int rfd, i;
    if (!plan.landlock)
        return;
    rfd = (int)syscall(SYS_landlock_create_ruleset, &plan.ll_attr, sizeof plan.ll_attr, 0);
    if (rfd < 0)
        fail(AIOGAOL_STEP_LANDLOCK, errno, "create ruleset");
    for (i = 0; i < plan.n_ll_paths; i++) {
        struct ll_path_beneath_attr pb;
        struct stat st;
        const char *path = plan.ll_paths[i].path;
        char self[64];
        int fd;
        /* The fallback's "/proc/self" (the only rule naming a symlink, and one of the kernel's own) is
         * this process's own /proc entry: opened by its number, since no link is followed here. */
        if (strncmp(path, "/proc/self", 10) == 0 && path[10] == '\0') {
            memcpy(self, "/proc/", 6);
            *fmt_ulong(self + 6, (unsigned long)getpid()) = '\0';
            path = self;
        }
        /* By handle, like the binds: a symlink on the way is a path changed since the profile
         * resolved it, never followed. */
        fd = open_nofollow(AT_FDCWD, path, O_PATH, 0);
        /* A rule for a path the jail does not hold, or that the program's user cannot reach (a root
         * server's program runs as nobody), grants nothing: skipping it only denies more. */
        if (fd < 0 && (errno == ENOENT || errno == EACCES))
            continue;
        if (fd < 0)
            fail_open(AIOGAOL_STEP_LANDLOCK, AIOGAOL_STEP_RULE_CHANGED, errno, plan.ll_paths[i].path);
        /* A host path (the fallback) must still be the object the profile resolved. */
        if ((plan.ll_paths[i].dev || plan.ll_paths[i].ino) &&
            (fstat(fd, &st) < 0 || (uint64_t)st.st_dev != plan.ll_paths[i].dev ||
             (uint64_t)st.st_ino != plan.ll_paths[i].ino))
            fail(AIOGAOL_STEP_RULE_CHANGED, ESTALE, plan.ll_paths[i].path);
        pb.allowed_access = plan.ll_paths[i].access;
        pb.parent_fd = fd;
        if (syscall(SYS_landlock_add_rule, rfd, LL_RULE_PATH_BENEATH, &pb, 0) < 0)
            fail(AIOGAOL_STEP_LANDLOCK, errno, plan.ll_paths[i].path);
        close(fd);
    }
    for (i = 0; i < plan.n_ll_ports; i++) {
        struct ll_net_port_attr np;
        np.allowed_access = plan.ll_ports[i].access;
        np.port = plan.ll_ports[i].port;
        if (syscall(SYS_landlock_add_rule, rfd, LL_RULE_NET_PORT, &np, 0) < 0)
            fail(AIOGAOL_STEP_LANDLOCK, errno, "port rule");
    }
    if (syscall(SYS_landlock_restrict_self, rfd, 0) < 0)
        fail(AIOGAOL_STEP_LANDLOCK, errno, "restrict_self");
    close(rfd);
}

static void drop_capabilities(void)
{
    struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];
    int cap;
    for (cap = 0; cap <= 63; cap++) {
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL &&
            !(plan.no_namespaces && errno == EPERM))
            fail(AIOGAOL_STEP_CAPABILITIES, errno, "bounding set");
    }
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL)
        fail(AIOGAOL_STEP_CAPABILITIES, errno, "ambient set");
    /* Root inside the namespace must not regain capabilities at exec, ever. */
    if (prctl(PR_SET_SECUREBITS, SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_SETUID_FIXUP |
                                     SECBIT_NO_SETUID_FIXUP_LOCKED | SECBIT_KEEP_CAPS_LOCKED |
                                     SECBIT_NO_CAP_AMBIENT_RAISE |
                                     SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED,
              0, 0, 0) < 0 && !(plan.no_namespaces && errno == EPERM))
        /* In the fallback an unprivileged caller has no CAP_SETPCAP for the bounding set and the
         * securebits; it holds no capability either, and no_new_privs (already set) keeps exec from
         * granting any. */
        fail(AIOGAOL_STEP_CAPABILITIES, errno, "securebits");
    /* The identity switch comes after the bounding set and securebits (it needs CAP_SETUID and
     * CAP_SETGID, and NO_SETUID_FIXUP keeps it from clearing them early), before capset clears all. */
    if (switch_identity) {
        gid_t g = (gid_t)plan.inside_gid;
        uid_t u = (uid_t)plan.inside_uid;
        if (setgroups(0, NULL) < 0)
            fail(AIOGAOL_STEP_IDENTITY, errno, "setgroups");
        if (setresgid(g, g, g) < 0)
            fail(AIOGAOL_STEP_IDENTITY, errno, "setresgid");
        if (setresuid(u, u, u) < 0)
            fail(AIOGAOL_STEP_IDENTITY, errno, "setresuid");
    }
    memset(data, 0, sizeof data);
    if (syscall(SYS_capset, &hdr, data) < 0)
        fail(AIOGAOL_STEP_CAPABILITIES, errno, "capset");
}

static const char *env_get(char **envp, const char *name)
{
    size_t n = str_len(name);
    for (; envp && *envp; envp++)
        if (strncmp(*envp, name, n) == 0 && (*envp)[n] == '=')
            return *envp + n + 1;
    return NULL;
}

/* execvpe's search, by hand so the error kept is the meaningful one (EACCES beats ENOENT). */
static void exec_program(void)
{
    const char *prog = plan.argv[0];
    const char *path, *p;
    int saved = ENOENT;
    char buf[PATH_MAX];
    if (strchr(prog, '/')) {
        execve(prog, plan.argv, plan.envp);
        saved = errno;
        /* ENOENT for a file that exists means its interpreter (ld.so, or a #! line) is missing. */
        if (saved == ENOENT && access(prog, F_OK) == 0)
            fail(AIOGAOL_STEP_INTERPRETER, saved, prog);
        fail(AIOGAOL_STEP_EXEC, saved, prog);
    }
    path = env_get(plan.envp, "PATH");
    if (!path)
        path = "/usr/local/bin:/usr/bin:/bin";
    for (p = path;; p++) {
        const char *end = strchrnul(p, ':');
        size_t dl = (size_t)(end - p), pl = str_len(prog);
        if (dl + pl + 2 <= sizeof buf) {
            size_t k = 0;
            if (dl == 0) {
                buf[k++] = '.';
            } else {
                memcpy(buf, p, dl);
                k = dl;
            }
            buf[k++] = '/';
            memcpy(buf + k, prog, pl + 1);
            execve(buf, plan.argv, plan.envp);
            if (errno == ENOENT && access(buf, F_OK) == 0)
                fail(AIOGAOL_STEP_INTERPRETER, ENOENT, buf);
            if (errno == EACCES)
                saved = EACCES;
            else if (errno != ENOENT && errno != ENOTDIR && errno != ESTALE)
                fail(AIOGAOL_STEP_EXEC, errno, prog);
        }
        if (*end == '\0')
            break;
        p = end;
    }
    fail(AIOGAOL_STEP_EXEC, saved, prog);
}

static pid_t init_pid;

static void __attribute__((noreturn)) run_program(void)
{
    struct sock_fprog prog;
    int keep[MAX_KEEP + 1], n = 0, i, sig;
    mark(AIOGAOL_STEP_FORK_PROGRAM);
    sigset_t none;

    /* Without a PID namespace nothing takes the program down with init: a SIGKILL of init (proc.kill())
     * must still end it.  Init is single-threaded, so the parent-death signal is exact here. */
    if (plan.no_namespaces) {
        if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0)
            fail(AIOGAOL_STEP_SIGNALS, errno, "PR_SET_PDEATHSIG");
        if (getppid() != init_pid)
            _exit(137);
    }
    if (plan.umask >= 0)
        umask((mode_t)(plan.umask & 0777));
    if (chdir(plan.cwd) < 0)
        fail(AIOGAOL_STEP_CHDIR, errno, plan.cwd);
    /* A new session: no controlling terminal, so TIOCSTI cannot push keys into the caller's tty. */
    if (setsid() < 0)
        fail(AIOGAOL_STEP_SETSID, errno, "setsid");
    for (i = 0; i < plan.n_rlimits; i++) {
        struct rlimit rl;
        rl.rlim_cur = (rlim_t)plan.rlimits[i].soft;
        rl.rlim_max = (rlim_t)plan.rlimits[i].hard;
        if (setrlimit(plan.rlimits[i].resource, &rl) < 0)
            fail(AIOGAOL_STEP_RLIMIT, errno, "setrlimit");
    }
    prog.len = (unsigned short)read_seccomp();
    prog.filter = seccomp_insns;
    for (i = 0; i < plan.n_keep; i++)
        keep[n++] = plan.keep[i];
    keep[n++] = err_fd;
    if (close_all_except(keep, n) < 0)
        fail(AIOGAOL_STEP_CLOSE_FDS, errno, "close_range");
    for (sig = 1; sig < NSIG; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP)
            continue;
        signal(sig, SIG_DFL); /* fails harmlessly for the real-time signals glibc reserves */
    }
    sigemptyset(&none);
    if (sigprocmask(SIG_SETMASK, &none, NULL) < 0)
        fail(AIOGAOL_STEP_SIGNALS, errno, "sigprocmask");
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        fail(AIOGAOL_STEP_NO_NEW_PRIVS, errno, "prctl");
    drop_capabilities();
    apply_landlock();
    mark(AIOGAOL_STEP_LANDLOCK);
    /* seccomp last, with TSYNC, so no thread and no later step escapes it.  (The TIME records after it
     * are plain writes to the error pipe, which the filter allows.) */
    if (prog.len > 0 &&
        syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog) != 0)
        fail(AIOGAOL_STEP_SECCOMP, errno, "seccomp");
    mark(AIOGAOL_STEP_SECCOMP);
    if (plan.agent_fd >= 0) /* a sandbox: its agent, as jailed as any program, instead of an exec */
        aiogaol_agent_main(plan.agent_fd, plan.cwd, err_fd, plan.agent_idle);
    mark(AIOGAOL_STEP_EXEC);
    exec_program();
    _exit(127);
}

/* ------------------------------------------------------------------------------------------------ */
/* Init: PID 1 of the jail                                                                           */

/* SIGKILL every process whose parent is init; 1 if any was found.  /proc/PID/stat's fourth field,
 * read after the last ')' since the command name may hold anything. */
static int kill_children(void)
{
    /* getdents64 on a buffer of its own rather than opendir, which allocates: init runs under a filter
     * of its own by now (see drop_init), which allows no memory management. */
    static char dents[8192] __attribute__((aligned(8)));
    int dfd = open("/proc", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int found = 0;
    char path[64], buf[512];
    long got_dents;
    if (dfd < 0)
        return 0;
    while ((got_dents = syscall(SYS_getdents64, dfd, dents, sizeof dents)) > 0) {
        long off;
        for (off = 0; off < got_dents;) {
            struct linux_dirent64 {
                uint64_t d_ino;
                int64_t d_off;
                unsigned short d_reclen;
                unsigned char d_type;
                char d_name[];
            } *e = (struct linux_dirent64 *)(dents + off);
            int fd;
            ssize_t got;
            char *p;
            off += e->d_reclen;
            if (e->d_name[0] < '1' || e->d_name[0] > '9' || str_len(e->d_name) > 20)
                continue;
            memcpy(path, "/proc/", 6);
            memcpy(path + 6, e->d_name, str_len(e->d_name));
            memcpy(path + 6 + str_len(e->d_name), "/stat", 6);
            fd = open(path, O_RDONLY | O_CLOEXEC);
            if (fd < 0)
                continue;
            got = read(fd, buf, sizeof buf - 1);
            close(fd);
            if (got <= 0)
                continue;
            buf[got] = '\0';
            p = strrchr(buf, ')');
            if (!p || p[1] != ' ' || !p[2] || p[3] != ' ')
                continue;
            if (strtol(p + 4, NULL, 10) == (long)init_pid) {
                kill((pid_t)strtol(e->d_name, NULL, 10), SIGKILL);
                found = 1;
            }
        }
    }
    close(dfd);
    return found;
}

/* In the fallback there is no PID namespace whose end kills everything: init is a subreaper instead,
 * so the program's orphans become init's children, and it kills and reaps them until none is left. */
static void kill_descendants(pid_t program)
{
    kill(-program, SIGKILL); /* the program's process group: most of its tree at once */
    for (;;) {
        int found = kill_children();
        if (waitpid(-1, NULL, found ? 0 : WNOHANG) < 0 && errno == ECHILD)
            return;
    }
}

static void kill_jail(pid_t program)
{
    if (plan.no_namespaces)
        kill_descendants(program);
    else
        kill(-1, SIGKILL); /* PID 1: everything in the namespace but init itself */
}

/* The program's stack while it shares init's memory.  It only writes there, to seccomp_insns and to its
 * own fd table and signal dispositions (which CLONE_VM does not share) before it execs or exits. */
static char program_stack[256 * 1024] __attribute__((aligned(16)));
static int program_sfd = -1;

static int program_main(void *arg)
{
    (void)arg;
    close(program_sfd);
    run_program();
}

/* lo up in the jail's own network namespace (ipv4 127.0.0.1 and, where IPv6 is on, ::1 come with it):
 * a loopback reachable from this jail only, as programs that serve themselves on 127.0.0.1 expect. */
static void loopback_up(void)
{
    struct ifreq ifr;
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        fail(AIOGAOL_STEP_LOOPBACK, errno, "socket");
    memset(&ifr, 0, sizeof ifr);
    memcpy(ifr.ifr_name, "lo", 3);
    if (ioctl(fd, SIOCGIFFLAGS, &ifr) < 0)
        fail(AIOGAOL_STEP_LOOPBACK, errno, "SIOCGIFFLAGS lo");
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (ioctl(fd, SIOCSIFFLAGS, &ifr) < 0)
        fail(AIOGAOL_STEP_LOOPBACK, errno, "SIOCSIFFLAGS lo");
    close(fd);
}

/* Init, once the program has exec'd (it needed init's capabilities to drop its own): nothing left of
 * them, no_new_privs and init's own seccomp filter.  It took the program's identity and was made
 * non-dumpable before the program was cloned (see run_init), so the program can neither ptrace it nor
 * read its memory.  Init still holds the error pipe here: a failure kills the
 * program and is reported as any set-up failure is (fail closed). */
static void drop_failed(pid_t program, const char *what)
{
    int e = errno;
    kill_jail(program);
    fail(AIOGAOL_STEP_DROP_INIT, e, what);
}

static void drop_init(pid_t program)
{
    struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];
    struct sock_fprog prog;
    int cap;
    /* Without namespaces an unprivileged init has no CAP_SETPCAP for the bounding set (nor any
     * capability to lose); no_new_privs, capset and the filter still apply. */
    for (cap = 0; cap <= 63; cap++)
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL &&
            !(plan.no_namespaces && errno == EPERM))
            drop_failed(program, "bounding set");
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL)
        drop_failed(program, "ambient set");
    memset(data, 0, sizeof data);
    if (syscall(SYS_capset, &hdr, data) < 0)
        drop_failed(program, "capset");
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        drop_failed(program, "no_new_privs");
    prog.len = init_len;
    prog.filter = init_insns;
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) != 0)
        drop_failed(program, "seccomp");
}

static void __attribute__((noreturn)) run_init(void)
{
    sigset_t all;
    int sfd, status = 0, done = 0;
    pid_t child;
    struct pollfd pfd[2];

    uint64_t deadline = now_ns() / 1000000u + plan.deadline_ms;

    /* Init never runs beside the program unfiltered (see drop_init): no filter, no jail. */
    if (init_len == 0)
        fail(AIOGAOL_STEP_DROP_INIT, EINVAL, "no seccomp filter for init (--init-filter)");
    if (plan.no_namespaces) {
        init_pid = getpid();
        if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) < 0)
            fail(AIOGAOL_STEP_FORK_PROGRAM, errno, "PR_SET_CHILD_SUBREAPER");
    } else {
        if (plan.loopback && plan.unshare_net)
            loopback_up();
        build_jail();
        mark(AIOGAOL_STEP_HOSTNAME);
    }
    /* Before the program exists, init takes its identity (a root server's init built the jail as root,
     * for root-only bind sources, and is nobody from here on, on the host as in the jail), keeping its
     * capabilities for the program's own drops (NO_SETUID_FIXUP; drop_init clears them). */
    if (switch_identity) {
        gid_t g = (gid_t)plan.inside_gid;
        uid_t u = (uid_t)plan.inside_uid;
        if (prctl(PR_SET_SECUREBITS, SECBIT_NO_SETUID_FIXUP, 0, 0, 0) < 0)
            fail(AIOGAOL_STEP_IDENTITY, errno, "init's securebits");
        if (setgroups(0, NULL) < 0)
            fail(AIOGAOL_STEP_IDENTITY, errno, "init's setgroups");
        if (setresgid(g, g, g) < 0)
            fail(AIOGAOL_STEP_IDENTITY, errno, "init's setresgid");
        if (setresuid(u, u, u) < 0)
            fail(AIOGAOL_STEP_IDENTITY, errno, "init's setresuid");
    }
    /* Then (a change of ids resets it to fs.suid_dumpable) non-dumpable, before the program exists: it
     * may never ptrace init or read /proc/1/mem.  (The program shares init's memory until its exec,
     * which makes it dumpable again in its own.) */
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0)
        fail(AIOGAOL_STEP_DROP_INIT, errno, "PR_SET_DUMPABLE");

    sigfillset(&all);
    if (sigprocmask(SIG_SETMASK, &all, NULL) < 0)
        fail(AIOGAOL_STEP_SIGNALFD, errno, "sigprocmask");
    sfd = signalfd(-1, &all, SFD_CLOEXEC);
    if (sfd < 0)
        fail(AIOGAOL_STEP_SIGNALFD, errno, "signalfd");

    /* vfork-class: the program shares init's memory (on a stack of its own) until its exec, so no page
     * table is copied and no page faulted in for it; init waits, which it would do anyway. */
    program_sfd = sfd;
    /* A sandbox's agent never execs: it gets memory of its own (a plain fork onto the same stack). */
    child = clone(program_main, program_stack + sizeof program_stack,
                  (plan.agent_fd >= 0 ? 0 : CLONE_VM | CLONE_VFORK) | SIGCHLD, NULL);
    if (child < 0)
        fail(AIOGAOL_STEP_FORK_PROGRAM, errno, "clone");

    drop_init(child);
    mark(AIOGAOL_STEP_DROP_INIT);

    /* Init keeps nothing the program's readers could wait on: its copies of stdio, pass_fds and
     * the error pipe go, so EOF means what it means for a plain child. */
    {
        int k;
        close(0);
        close(1);
        close(2);
        for (k = 0; k < plan.n_keep; k++)
            close(plan.keep[k]);
        if (plan.seccomp_fd >= 0)
            close(plan.seccomp_fd);
        close(err_fd);
    }

    pfd[0].fd = sfd;
    pfd[0].events = POLLIN;
    pfd[1].fd = plan.lifeline_fd;
    pfd[1].events = POLLIN;
    for (;;) {
        int timeout = -1;
        /* A sandbox's lifetime: kept here, since no program of the jail can stop or kill PID 1. */
        if (plan.deadline_ms && !done) {
            uint64_t now = now_ns() / 1000000u;
            if (now >= deadline) {
                kill_jail(child);
                plan.deadline_ms = 0;
                continue;
            }
            timeout = (int)(deadline - now > 1000000 ? 1000000 : deadline - now);
        }
        if (poll(pfd, plan.lifeline_fd >= 0 ? 2 : 1, timeout) < 0) {
            if (errno == EINTR)
                continue;
            kill_jail(child);
            _exit(126);
        }
        if (plan.lifeline_fd >= 0 && (pfd[1].revents & (POLLIN | POLLHUP | POLLERR))) {
            /* The server is gone: the jail goes with it. */
            kill_jail(child);
            _exit(137);
        }
        if (pfd[0].revents & POLLIN) {
            struct signalfd_siginfo si;
            ssize_t n = read(sfd, &si, sizeof si);
            if (n != (ssize_t)sizeof si)
                continue;
            if (si.ssi_signo == SIGCHLD) {
                pid_t p;
                int st;
                while ((p = waitpid(-1, &st, WNOHANG)) > 0) {
                    if (p == child) {
                        status = st;
                        done = 1;
                        mark_lifeline(AIOGAOL_STEP_REAP_PROGRAM);
                    }
                }
            } else if (!done && (int)si.ssi_signo == SIGRTMAX) {
                /* The server's "kill the program": SIGKILL for it, while init lives on to reap it and
                 * its orphans and to report, so the jail's usage stays whole (SIGKILL to init itself
                 * would lose the children's rusage). */
                kill(child, SIGKILL);
            } else if (!done) {
                kill(child, (int)si.ssi_signo);
            }
        }
        if (done)
            break;
    }
    /* Take the orphans down with the program, and reap them, so their CPU time counts in the rusage
     * the server reads from init; then report the program's exact status. */
    kill_jail(child);
    for (;;) {
        /* In a PID namespace nothing survives kill(-1, SIGKILL), so blocking is bounded; in the
         * fallback, a process forked during the kill could outlive it, so only what is dead is taken. */
        errno = 0;
        if (waitpid(-1, NULL, __WALL | (plan.no_namespaces ? WNOHANG : 0)) <= 0 && errno != EINTR)
            break;
    }
    mark_lifeline(AIOGAOL_STEP_REPORT_EXIT);
    if (plan.lifeline_fd >= 0) {
        struct aiogaol_record rec;
        memset(&rec, 0, sizeof rec);
        rec.kind = AIOGAOL_RECORD_EXIT;
        rec.value = status;
        send(plan.lifeline_fd, &rec, sizeof rec, MSG_NOSIGNAL);
    }
    if (WIFEXITED(status))
        _exit(WEXITSTATUS(status));
    _exit(128 + WTERMSIG(status));
}

/* ------------------------------------------------------------------------------------------------ */
/* The intermediate process: the spawner, or the one-shot helper                                     */

/* cgroup v2 placement.  Init is created straight into the jail's cgroup (clone3 CLONE_INTO_CGROUP,
 * Linux 5.7), so every process of the jail is in it from its first instruction, the helper never joins
 * it (pids.max counts only the jail), and a CLONE_NEWCGROUP namespace is rooted there.  Where clone3 is
 * missing (ENOSYS, or a seccomp policy that answers so) the helper moves itself in by cgroup.procs
 * first and init inherits the cgroup; the helper exits at once and is not the jail's to count.  Only the
 * one-shot helper places jails in cgroups: the spawner must never move itself. */
#ifndef CLONE_INTO_CGROUP
#define CLONE_INTO_CGROUP 0x200000000ULL
#endif
#ifndef SYS_clone3
#define SYS_clone3 435
#endif
struct aiogaol_clone_args {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid,
        set_tid_size, cgroup;
};

static pid_t clone_into_cgroup(unsigned long flags)
{
    struct aiogaol_clone_args ca;
    pid_t pid;
    int procs;
    memset(&ca, 0, sizeof ca);
    ca.flags = (uint64_t)flags | CLONE_INTO_CGROUP;
    /* clone3 refuses an exit signal with CLONE_PARENT: init inherits the helper's, which is SIGCHLD
     * (posix_spawn), as the legacy clone does. */
    ca.exit_signal = (flags & CLONE_PARENT) ? 0 : SIGCHLD;
    ca.cgroup = (uint64_t)plan.cgroup_fd;
    pid = (pid_t)syscall(SYS_clone3, &ca, sizeof ca);
    if (pid >= 0 || (errno != ENOSYS && errno != E2BIG)) {
        if (pid < 0)
            fail(AIOGAOL_STEP_CLONE_INIT, errno, "clone3 into the jail's cgroup");
        return pid;
    }
    procs = openat(plan.cgroup_fd, "cgroup.procs", O_WRONLY | O_CLOEXEC);
    if (procs < 0)
        fail(AIOGAOL_STEP_CLONE_INIT, errno, "open cgroup.procs");
    if (write(procs, "0\n", 2) != 2)
        fail(AIOGAOL_STEP_CLONE_INIT, errno, "write cgroup.procs");
    close(procs);
    return (pid_t)syscall(SYS_clone, flags | SIGCHLD, NULL, NULL, NULL, NULL);
}

/* The fds init is handed.  The one-shot helper gets them from posix_spawn at their final numbers; the
 * spawner receives them over its socket at whatever numbers are free, with the numbers init wants
 * (req_to, numbered as in the helper's arguments), and init moves them there first thing. */
#define MAX_REQ_FDS 253 /* SCM_MAX_FD: the most one message can carry */
static int req_from[MAX_REQ_FDS], req_to[MAX_REQ_FDS], req_n;
static int sync_fds[2] = {-1, -1};

static void place_fds(void)
{
    int base = 3, i, t, moved[MAX_REQ_FDS], sync_moved;
    for (i = 0; i < req_n; i++) {
        if (req_from[i] >= base)
            base = req_from[i] + 1;
        if (req_to[i] >= base)
            base = req_to[i] + 1;
    }
    if (sync_fds[0] >= base)
        base = sync_fds[0] + 1; /* -1 in a waiting init, which has no sync pipe any more */
    /* Out of the way of every target first, so no dup2 below clobbers an fd still to be placed. */
    for (i = 0; i < req_n; i++) {
        moved[i] = fcntl(req_from[i], F_DUPFD_CLOEXEC, base);
        if (moved[i] < 0)
            fail(AIOGAOL_STEP_CLOSE_FDS, errno, "place fds");
    }
    if (sync_fds[0] >= 0) {
        sync_moved = fcntl(sync_fds[0], F_DUPFD_CLOEXEC, base);
        if (sync_moved < 0)
            fail(AIOGAOL_STEP_CLOSE_FDS, errno, "place fds");
        sync_fds[0] = sync_moved;
    }
    for (i = 0; i < req_n; i++)
        if (dup2(moved[i], req_to[i]) < 0)
            fail(AIOGAOL_STEP_CLOSE_FDS, errno, "place fds");
    /* A stdio slot the server did not send was closed in the server: closed in the jail too. */
    for (t = 0; t < 3; t++) {
        for (i = 0; i < req_n && req_to[i] != t; i++)
            ;
        if (i == req_n)
            close(t);
    }
    err_fd = plan.err_fd;
}

/* Init's fds once they are at their numbers: the plan's own made CLOEXEC (nothing of the set-up survives
 * the program's exec; EOF on the error pipe is the success signal), every other fd closed but `also`. */
static void init_fds(int also)
{
    int keep[MAX_KEEP + 5], n = 0, i;
    if (fcntl(err_fd, F_SETFD, FD_CLOEXEC) < 0)
        fail(AIOGAOL_STEP_ARGS, errno, "error pipe");
    if (plan.lifeline_fd >= 0 && fcntl(plan.lifeline_fd, F_SETFD, FD_CLOEXEC) < 0)
        fail(AIOGAOL_STEP_ARGS, errno, "lifeline");
    if (plan.seccomp_fd >= 0 && fcntl(plan.seccomp_fd, F_SETFD, FD_CLOEXEC) < 0)
        fail(AIOGAOL_STEP_ARGS, errno, "seccomp fd");
    if (plan.cgroup_fd >= 0)
        close(plan.cgroup_fd); /* placement is done; nothing in the jail needs a handle on it */
    for (i = 0; i < plan.n_keep; i++)
        keep[n++] = plan.keep[i];
    keep[n++] = err_fd;
    if (also >= 0)
        keep[n++] = also;
    if (plan.lifeline_fd >= 0)
        keep[n++] = plan.lifeline_fd;
    if (plan.seccomp_fd >= 0)
        keep[n++] = plan.seccomp_fd;
    if (close_all_except(keep, n) < 0)
        fail(AIOGAOL_STEP_CLOSE_FDS, errno, "close_range");
}

/* Our niceness raised to nice (never lowered: raising needs no privilege); -1 with errno on failure.
 * For the spawner (--serve FD NICE) and for init (apply_nice). */
static int raise_nice(int nice)
{
    int now;
    errno = 0;
    now = getpriority(PRIO_PROCESS, 0);
    if (now == -1 && errno)
        return -1;
    return nice > now ? setpriority(PRIO_PROCESS, 0, nice) : 0;
}

/* The jail's niceness, set by init before it builds anything: the jail's set-up and its program then
 * both yield the CPU to the server (see Limits.nice).  A jail cannot lower it again, having no
 * CAP_SYS_NICE in the host's user namespace. */
static void apply_nice(void)
{
    if (plan.nice >= 0 && raise_nice(plan.nice) < 0)
        fail(AIOGAOL_STEP_PRIORITY, errno, "setpriority");
}

/* Init's first steps, in both modes: its fds in place, the rest closed, then wait for the id maps. */
static void __attribute__((noreturn)) init_child(void)
{
    char go;
    fail_escape = NULL;
    close(sync_fds[1]);
    if (req_n > 0) {
        place_fds();
        signal(SIGPIPE, SIG_DFL); /* the spawner ignores it; init starts from the defaults */
    }
    init_fds(sync_fds[0]);
    if (read(sync_fds[0], &go, 1) != 1) {
        /* Whoever created us died before the id maps, perhaps before it wrote our PID: write it here too
         * (a second PID record is harmless), so that the server reaps us. */
        pid_t me = host_pid();
        if (me > 0)
            send_record(err_fd, AIOGAOL_RECORD_PID, AIOGAOL_STEP_NONE, 0, (int)me, "");
        fail(AIOGAOL_STEP_CLONE_INIT, EIO, "the process that created init ended before the id maps");
    }
    close(sync_fds[0]);
    apply_nice();
    /* The network namespace is made here rather than in the clone: creating one is the dearest part of
     * a jail's namespaces, and here it is paid at the jail's niceness rather than by the spawner, whose
     * CPU time competes with the server's. */
    if (plan.unshare_net && !plan.no_namespaces && unshare(CLONE_NEWNET) < 0)
        fail(AIOGAOL_STEP_UNSHARE, errno, "network namespace");
    mark(AIOGAOL_STEP_MAKE_PRIVATE);
    run_init();
}

/* Create init (the server's child, in the new namespaces), report its PID, write its id maps, and let
 * it go.  The PID goes first: once init exists, the server must learn of it whatever fails next, since
 * only the server can reap it. */
/* --uid/--gid name the host identity the program runs as, mapped to the same numbers inside.  By default
 * it is the caller's own (mapped to itself); a root caller passes nobody's, so the program never holds
 * root's files as their owner nor root's supplementary groups. */
static void resolve_identity(uid_t uid, gid_t gid)
{
    if (plan.inside_uid < 0)
        plan.inside_uid = (long)uid;
    if (plan.inside_gid < 0)
        plan.inside_gid = (long)gid;
    switch_identity = plan.inside_uid != (long)uid || plan.inside_gid != (long)gid;
}

#define JAIL_NAMESPACES (CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWCGROUP)

/* Init's id maps, from the parent user namespace: an unprivileged caller may map only its own ids, and
 * only once setgroups is denied.  A caller with CAP_SETUID/CAP_SETGID maps nobody and keeps setgroups,
 * so that the program can shed the caller's supplementary groups before it runs.  The caller's own id
 * stays mapped (as 0 when another identity is added), so that init, which builds the jail, can still
 * reach the host paths the caller can reach. */
static void write_maps(pid_t init, uid_t uid, gid_t gid)
{
    char path[64], *p;
    memcpy(path, "/proc/", 6);
    p = fmt_ulong(path + 6, (unsigned long)init);
    if (!switch_identity) {
        memcpy(p, "/setgroups", 11);
        write_file(AIOGAOL_STEP_SETGROUPS, path, "deny");
    }
    memcpy(p, "/gid_map", 9);
    write_id_map(AIOGAOL_STEP_GID_MAP, path, (unsigned long)gid, (unsigned long)plan.inside_gid);
    memcpy(p, "/uid_map", 9);
    write_id_map(AIOGAOL_STEP_UID_MAP, path, (unsigned long)uid, (unsigned long)plan.inside_uid);
}

static pid_t start_jail(void)
{
    uid_t uid = getuid();
    gid_t gid = getgid();
    int flags;
    pid_t init;

    resolve_identity(uid, gid);
    flags = JAIL_NAMESPACES; /* init unshares the network namespace itself (see init_child) */
    if (plan.no_namespaces)
        flags = 0; /* the fallback: init is only the server's child and the program's supervisor */
    if (pipe2(sync_fds, O_CLOEXEC) < 0)
        fail(AIOGAOL_STEP_CLONE_INIT, errno, "sync pipe");
    /* Init is created straight into the new namespaces, and as the server's child (CLONE_PARENT).
     * The helper stays in the parent user namespace and writes init's id maps from there: that is
     * what lets a privileged caller map an identity other than its own (see --uid above). */
    if (plan.cgroup_fd >= 0)
        init = clone_into_cgroup(CLONE_PARENT | flags);
    else
        init = (pid_t)syscall(SYS_clone, CLONE_PARENT | flags | SIGCHLD, NULL, NULL, NULL, NULL);
    if (init < 0)
        fail(AIOGAOL_STEP_UNSHARE, errno, "user+pid+mount+ipc+uts+cgroup namespaces");
    if (init == 0)
        init_child();
    close(sync_fds[0]);
    sync_fds[0] = -1;
    send_record(err_fd, AIOGAOL_RECORD_PID, AIOGAOL_STEP_NONE, 0, (int)init, "");
    mark(AIOGAOL_STEP_UNSHARE);
    if (!plan.no_namespaces)
        write_maps(init, uid, gid);
    if (write(sync_fds[1], "g", 1) != 1)
        fail(AIOGAOL_STEP_CLONE_INIT, errno, "sync pipe");
    close(sync_fds[1]);
    sync_fds[1] = -1;
    mark(AIOGAOL_STEP_UID_MAP);
    return init;
}

/* Split a blob of NUL-terminated strings into a NULL-terminated vector; the end of the blob, or NULL
 * when it holds fewer than count strings. */
static const char *split_blob(const char *blob, const char *end, int count, char **vec)
{
    int i;
    for (i = 0; i < count; i++) {
        const char *nul = memchr(blob, '\0', (size_t)(end - blob));
        if (!nul)
            return NULL;
        vec[i] = (char *)blob;
        blob = nul + 1;
    }
    vec[count] = NULL;
    return blob;
}

int aiogaol_helper_main(int argc, char **argv, char **envp)
{
    if ((argc == 3 || argc == 4) && strcmp(argv[1], "--serve") == 0) {
        /* The spawner's niceness, the niceness of every jail it serves (see _spawner.py): raised once,
         * here, so that its clones and id maps, like the jails' set-up, yield the CPU to the server. */
        if (argc == 4 && raise_nice((int)parse_num(argv[3], 10)) < 0)
            return 1;
        return aiogaol_serve((int)parse_num(argv[2], 10));
    }
    parse_args(argc, argv, envp);
    if (err_fd < 0)
        _exit(127);
    mark(AIOGAOL_STEP_ARGS);
    start_jail();
    _exit(0);
}

/* ------------------------------------------------------------------------------------------------ */
/* The spawner: the helper kept running, one jail per request                                       */

/* A request is one SOCK_SEQPACKET message: int32 argc, envc, nfds; int32 target[nfds]; argc strings
 * (the helper's arguments, argv[0] included) and envc strings (the program's environment), each
 * NUL-terminated; and nfds fds as SCM_RIGHTS, the error pipe first.  The PID record, failures and EOF on
 * exec travel on the request's own error pipe, as for the one-shot helper, so the server reads every
 * spawn the same way.
 *
 * The spawner's own messages to the server, on the same socket, say which of the server's children it
 * created ahead of time (see "Waiting inits" below): int32 kind, int32 pid. */
enum { REPORT_WAITING = 1, REPORT_DISCARDED = 2 };

/* Read one message and its fds into req_from/req_n; 1, or 0 at EOF (or on an error that ends the
 * reader).  *truncated says the message or its fds did not fit. */
static int recv_request(int sock, char **buf, size_t *cap, size_t *len, int *truncated)
{
    static char cbuf[CMSG_SPACE(sizeof(int) * MAX_REQ_FDS)];
    struct msghdr msg;
    struct iovec iov;
    struct cmsghdr *c;
    ssize_t n;
    for (;;) {
        n = recv(sock, NULL, 0, MSG_PEEK | MSG_TRUNC);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return 0;
        if ((size_t)n + 1 > *cap) {
            char *grown = realloc(*buf, (size_t)n + 1);
            if (!grown)
                return 0;
            *buf = grown;
            *cap = (size_t)n + 1;
        }
        memset(&msg, 0, sizeof msg);
        iov.iov_base = *buf;
        iov.iov_len = *cap;
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf;
        msg.msg_controllen = sizeof cbuf;
        n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return 0;
        break;
    }
    req_n = 0;
    for (c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        int k, count;
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        count = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        for (k = 0; k < count && req_n < MAX_REQ_FDS; k++)
            memcpy(&req_from[req_n++], CMSG_DATA(c) + (size_t)k * sizeof(int), sizeof(int));
    }
    *len = (size_t)n;
    *truncated = (msg.msg_flags & (MSG_CTRUNC | MSG_TRUNC)) != 0;
    return 1;
}

/* The request's fd targets, argv and environment, then the plan from its arguments. */
static void parse_request(const char *buf, size_t len)
{
    static char **vec;
    static size_t vec_cap;
    int32_t head[3];
    const char *p, *end = buf + len;
    size_t need;
    int i;

    if (len < sizeof head)
        fail(AIOGAOL_STEP_ARGS, EINVAL, "short request");
    memcpy(head, buf, sizeof head);
    if (head[0] < 1 || head[1] < 0 || head[0] > 1 << 20 || head[1] > 1 << 20 || head[2] != req_n ||
        len < sizeof head + (size_t)req_n * sizeof(int32_t))
        fail(AIOGAOL_STEP_ARGS, EINVAL, "malformed request");
    for (i = 0; i < req_n; i++) {
        int32_t t;
        memcpy(&t, buf + sizeof head + (size_t)i * sizeof t, sizeof t);
        if (t < 0)
            fail(AIOGAOL_STEP_ARGS, EBADF, "fd target");
        req_to[i] = t;
    }
    need = (size_t)head[0] + (size_t)head[1] + 2;
    if (need > vec_cap) {
        char **grown = realloc(vec, need * sizeof *vec);
        if (!grown)
            fail(AIOGAOL_STEP_ARGS, ENOMEM, "request");
        vec = grown;
        vec_cap = need;
    }
    p = buf + sizeof head + (size_t)req_n * sizeof(int32_t);
    p = split_blob(p, end, head[0], vec);
    if (p)
        p = split_blob(p, end, head[1], vec + head[0] + 1);
    if (!p)
        fail(AIOGAOL_STEP_ARGS, EINVAL, "truncated request");
    parse_args(head[0], vec, vec + head[0] + 1);
    if (req_n < 1 || plan.err_fd != req_to[0])
        fail(AIOGAOL_STEP_ARGS, EINVAL, "the error pipe must be the request's first fd");
}

/* Waiting inits.  Most of a jail's set-up before its mounts is the clone into fresh namespaces (the
 * network namespace above all) and the id maps: about a millisecond.  So after each request the
 * spawner creates the next default jail's init ahead of time: cloned into all seven namespaces, maps
 * written, waiting on a socket of its own for a request.  A request that fits it (a network namespace of
 * its own, no cgroup, the same ids) is handed over; any other takes the usual path.
 *
 * A waiting init is the server's child like any init (CLONE_PARENT), so the server must know of it even
 * if it is never used: the spawner reports it (REPORT_WAITING) before letting it go, and reports it
 * again (REPORT_DISCARDED) if it drops it.  When the server retires the spawner it kills and reaps the
 * inits reported waiting and never handed a request; a handed one reaches the server through that
 * request's PID record, as any init does.
 *
 * Its mount namespace is a copy of the host's taken when it was created: the spawner watches the host's
 * mount table (poll on /proc/self/mountinfo) and drops a waiting init made before a change, so a jail
 * never binds from a stale view. */
static pid_t waiting_pid;
static int waiting_chan = -1;
static long waiting_uid = -1, waiting_gid = -1; /* the ids it was mapped for */
static unsigned long long waiting_root_size;     /* the size of the jail root it prebuilt */
static int waiting_off;                         /* creating one failed: the usual path only */
static int mounts_fd = -1;
#define WAITING_IDLE_MS 2    /* quiet time before making one, when no jail is known to be starting */
#define WAITING_AFTER_MS 10  /* longest wait for the last jail's init to exit first */
static int last_init = -1;   /* pidfd of the init last started, until it exits */

/* A server that keeps spawning the same profile gets its next jail built in full ahead of time: every
 * mount of the profile and the pivot into the jail, not only the standard part.  The spawner keeps the
 * last request's mounts as bytes (ops_blob); when two requests in a row had the same, the next waiting
 * init builds those, then tells the spawner it is ready (one message on its socket) with the device and
 * inode of each host file or directory it bound.  It is handed only a request whose mounts are byte for
 * byte the same, and only while each of those host paths still names the same file (a stat each, at the
 * hand-over): a bind resolves its path when it is made, and a jail must not show a file the host has
 * since replaced by rename or removed, which changes no mount.  Otherwise, or if it failed to build them
 * (it exits), it is dropped and the request takes the usual path, where any failure is reported. */
static char *last_ops;          /* the last request's mounts, as ops_blob made them */
static size_t last_ops_len;
static int ops_steady;          /* the last two requests (that a waiting init may serve) had the same */
static char *waiting_ops;       /* the mounts the waiting init builds in full; NULL: the standard part */
static size_t waiting_ops_len;
static int waiting_ready_seen;  /* it said it has built them, and what it bound: */
static struct bound_inode waiting_bound[MAX_OPS];
static int waiting_n_bound;
#define FULL_READY_WAIT_MS 2    /* longest wait at a hand-over for one still building */

static int blob_put(char **out, size_t *cap, size_t *n, const void *p, size_t k)
{
    if (*n + k > *cap) {
        size_t want = (*n + k) * 2;
        char *grown = realloc(*out, want);
        if (!grown)
            return -1;
        *out = grown;
        *cap = want;
    }
    memcpy(*out + *n, p, k);
    *n += k;
    return 0;
}

static int blob_str(char **out, size_t *cap, size_t *n, const char *str)
{
    char present = str != NULL;
    if (blob_put(out, cap, n, &present, 1) < 0)
        return -1;
    return str ? blob_put(out, cap, n, str, str_len(str) + 1) : 0;
}

/* The plan's mounts (its ops and the root's size) as bytes, malloc'd; NULL if out of memory. */
static char *ops_blob(size_t *len)
{
    char *out = NULL;
    size_t cap = 0, n = 0;
    int32_t count = plan.n_ops, i;
    if (blob_put(&out, &cap, &n, &plan.root_size, sizeof plan.root_size) < 0 ||
        blob_put(&out, &cap, &n, &count, sizeof count) < 0)
        goto oom;
    for (i = 0; i < count; i++) {
        const struct op *op = &plan.ops[i];
        int32_t kind = (int32_t)op->kind;
        if (blob_put(&out, &cap, &n, &kind, sizeof kind) < 0 ||
            blob_put(&out, &cap, &n, &op->size, sizeof op->size) < 0 ||
            blob_put(&out, &cap, &n, &op->mode, sizeof op->mode) < 0 ||
            blob_put(&out, &cap, &n, &op->dev, sizeof op->dev) < 0 ||
            blob_put(&out, &cap, &n, &op->ino, sizeof op->ino) < 0 ||
            blob_str(&out, &cap, &n, op->a) < 0 || blob_str(&out, &cap, &n, op->b) < 0)
            goto oom;
    }
    *len = n;
    return out;
oom:
    free(out);
    return NULL;
}

static int same_bytes(const char *a, size_t alen, const char *b, size_t blen)
{
    return a && b && alen == blen && memcmp(a, b, alen) == 0;
}

static const char *blob_take_str(const char **p, const char *end)
{
    const char *str, *nul;
    if (*p >= end)
        return NULL;
    if (*(*p)++ == 0)
        return NULL;
    str = *p;
    nul = memchr(str, '\0', (size_t)(end - str));
    if (!nul)
        return NULL;
    *p = nul + 1;
    return str;
}

/* The reverse of ops_blob, into plan (the strings point into the blob); -1 if it does not parse. */
static int ops_from_blob(const char *blob, size_t len)
{
    const char *p = blob, *end = blob + len;
    int32_t count, i, kind;
    if (len < sizeof plan.root_size + sizeof count)
        return -1;
    memcpy(&plan.root_size, p, sizeof plan.root_size);
    p += sizeof plan.root_size;
    memcpy(&count, p, sizeof count);
    p += sizeof count;
    if (count < 0 || count > MAX_OPS)
        return -1;
    for (i = 0; i < count; i++) {
        struct op *op = &plan.ops[i];
        if ((size_t)(end - p) < sizeof kind + sizeof op->size + sizeof op->mode + sizeof op->dev +
                                    sizeof op->ino)
            return -1;
        memcpy(&kind, p, sizeof kind);
        p += sizeof kind;
        op->kind = (enum op_kind)kind;
        memcpy(&op->size, p, sizeof op->size);
        p += sizeof op->size;
        memcpy(&op->mode, p, sizeof op->mode);
        p += sizeof op->mode;
        memcpy(&op->dev, p, sizeof op->dev);
        p += sizeof op->dev;
        memcpy(&op->ino, p, sizeof op->ino);
        p += sizeof op->ino;
        op->a = blob_take_str(&p, end);
        op->b = blob_take_str(&p, end);
    }
    plan.n_ops = count;
    return p == end ? 0 : -1;
}

static void forget_waiting_ops(void)
{
    free(waiting_ops);
    waiting_ops = NULL;
    waiting_ops_len = 0;
    waiting_ready_seen = 0;
}

/* Whether the waiting init building in full has done so; waits FULL_READY_WAIT_MS at most. */
static int waiting_ready(void)
{
    struct pollfd p;
    ssize_t n;
    if (waiting_ready_seen)
        return 1;
    p.fd = waiting_chan;
    p.events = POLLIN;
    p.revents = 0;
    if (poll(&p, 1, FULL_READY_WAIT_MS) <= 0)
        return 0;
    n = recv(waiting_chan, waiting_bound, sizeof waiting_bound, MSG_DONTWAIT);
    if (n < (ssize_t)sizeof waiting_bound[0] || n % (ssize_t)sizeof waiting_bound[0] != 0)
        return 0; /* one byte: it failed to build them (or EOF: it is gone) */
    waiting_n_bound = (int)(n / (ssize_t)sizeof waiting_bound[0]) - 1; /* less the zero entry */
    waiting_ready_seen = 1;
    return 1;
}

/* Whether each host path the request binds still names what the waiting init bound and what the profile
 * resolved, reached as a bind reaches it (no symlink followed): a path swapped for a symlink since the
 * jail was built drops it, and the usual path then reports "bind source changed". */
static int binds_current(void)
{
    struct stat st;
    int i, k = 0, fd;
    for (i = 0; i < plan.n_ops; i++) {
        const struct op *op = &plan.ops[i];
        if (op->kind != OP_RO && op->kind != OP_RW)
            continue;
        if (k >= waiting_n_bound)
            return 0;
        fd = open_nofollow(AT_FDCWD, op->a, O_PATH, 0);
        if (fd < 0)
            return 0;
        if (fstat(fd, &st) < 0 || (uint64_t)st.st_dev != waiting_bound[k].dev ||
            (uint64_t)st.st_ino != waiting_bound[k].ino || (uint64_t)st.st_dev != op->dev ||
            (uint64_t)st.st_ino != op->ino) {
            close(fd);
            return 0;
        }
        close(fd);
        k++;
    }
    return k == waiting_n_bound;
}

static void forget_last_init(void)
{
    if (last_init >= 0)
        close(last_init);
    last_init = -1;
}

static void watch_init(pid_t pid)
{
    forget_last_init();
    last_init = (int)syscall(SYS_pidfd_open, pid, 0); /* -1 where pidfds are missing: the idle delay */
    if (last_init >= 0)
        fcntl(last_init, F_SETFD, FD_CLOEXEC);
}

/* Our PID in the host's PID namespace, from the host's /proc (a new init has not mounted its own yet);
 * 0 if unknown. */
static pid_t host_pid(void)
{
    char buf[32];
    ssize_t n = readlink("/proc/self", buf, sizeof buf - 1);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    return (pid_t)strtol(buf, NULL, 10);
}

static void report(int sock, int kind, pid_t pid)
{
    int32_t msg[2];
    msg[0] = kind;
    msg[1] = (int32_t)pid;
    /* Blocking: the server drains these at every spawn, and there are at most two per request. */
    while (send(sock, msg, sizeof msg, MSG_NOSIGNAL) < 0 && errno == EINTR)
        ;
}

static int mounts_changed(void)
{
    struct pollfd p;
    if (mounts_fd < 0)
        return 1;
    p.fd = mounts_fd;
    p.events = POLLPRI;
    p.revents = 0;
    return poll(&p, 1, 0) != 0; /* POLLPRI|POLLERR once per change since the last poll */
}

static void drop_waiting(int sock)
{
    if (!waiting_pid)
        return;
    close(waiting_chan); /* it exits at EOF */
    waiting_chan = -1;
    report(sock, REPORT_DISCARDED, waiting_pid);
    waiting_pid = 0;
    forget_waiting_ops();
}

/* The waiting init: no fd but its socket until a request comes, then what init_child does. */
static void __attribute__((noreturn)) waiting_child(int chan, int server, uid_t uid, gid_t gid,
                                                    unsigned long long root_size)
{
    char *buf = NULL;
    size_t cap = 0, len;
    int truncated, keep[3];
    uint64_t got;
    char go;
    fail_escape = NULL;
    err_fd = -1;
    close(sync_fds[1]);
    keep[0] = chan;
    keep[1] = sync_fds[0];
    keep[2] = server;
    if (close_all_except(keep, 3) < 0)
        _exit(127);
    signal(SIGPIPE, SIG_DFL);
    if (read(sync_fds[0], &go, 1) != 1) {
        /* The spawner died between the clone and letting us go, perhaps before it told the server of
         * us: tell it ourselves (twice is harmless), on our copy of the spawner's socket, so that the
         * server reaps us when it retires the dead spawner. */
        pid_t me = host_pid();
        if (me > 0)
            report(server, REPORT_WAITING, me);
        _exit(127);
    }
    close(server); /* from here on the spawner speaks for us */
    close(sync_fds[0]);
    sync_fds[0] = -1;
    /* What every default jail has, done while nobody waits.  A failure here ends this init unseen (no
     * request, no error pipe): the hand-over then fails and the request takes the usual path, where the
     * same step fails again and is reported. */
    build_standard(root_size);
    if (waiting_ops) {
        /* A steady profile's mounts too, and the pivot into the jail (see "full" above).  If that fails
         * (a host path gone, say), it says so in one byte and waits to be dropped: exiting now would
         * leave the server a zombie until its next spawn. */
        static jmp_buf escape;
        if (setjmp(escape) == 0) {
            fail_escape = &escape;
            if (ops_from_blob(waiting_ops, waiting_ops_len) < 0)
                fail(AIOGAOL_STEP_ARGS, EINVAL, "mounts");
            n_bound = 0;
            build_mounts();
            fail_escape = NULL;
            prebuilt = PREBUILT_ALL;
            /* What it bound, then a zero entry, so that the message is never empty (empty means EOF). */
            memset(&bound[n_bound < MAX_OPS ? n_bound : MAX_OPS - 1], 0, sizeof bound[0]);
            if (n_bound >= MAX_OPS ||
                send(chan, bound, sizeof bound[0] * (size_t)(n_bound + 1), MSG_NOSIGNAL) < 0)
                _exit(0);
        } else {
            fail_escape = NULL;
            if (send(chan, "x", 1, MSG_NOSIGNAL) == 1)
                for (;;) {
                    ssize_t r = recv(chan, &go, 1, 0);
                    if (r > 0 || (r < 0 && errno == EINTR))
                        continue;
                    break; /* EOF: dropped */
                }
            _exit(0);
        }
    }
    if (!recv_request(chan, &buf, &cap, &len, &truncated))
        _exit(0); /* dropped, or the spawner is gone: never used */
    got = now_ns();
    close(chan);
    err_fd = req_n > 0 ? req_from[0] : -1;
    if (truncated)
        fail(AIOGAOL_STEP_ARGS, E2BIG, "request");
    parse_request(buf, len);
    resolve_identity(uid, gid); /* the spawner checked that the request wants the ids mapped here */
    place_fds();
    init_fds(-1);
    apply_nice();
    mark_at(AIOGAOL_STEP_MAKE_PRIVATE, got);
    if (prebuilt == PREBUILT_ALL)
        mark_at(AIOGAOL_STEP_BUILT_AHEAD, got);
    run_init();
}

static void make_waiting(int sock)
{
    static jmp_buf escape;
    int chan[2] = {-1, -1};
    uid_t uid = getuid();
    gid_t gid = getgid();
    pid_t pid = 0;
    if (waiting_pid || waiting_off || waiting_uid < 0)
        return;
    (void)mounts_changed(); /* what changed before this clone is in its copy */
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, chan) < 0 || pipe2(sync_fds, O_CLOEXEC) < 0) {
        waiting_off = 1;
        goto out;
    }
    plan.inside_uid = waiting_uid;
    plan.inside_gid = waiting_gid;
    resolve_identity(uid, gid);
    forget_waiting_ops();
    if (ops_steady && last_ops && (waiting_ops = malloc(last_ops_len)) != NULL) {
        memcpy(waiting_ops, last_ops, last_ops_len);
        waiting_ops_len = last_ops_len;
    }
    pid = (pid_t)syscall(SYS_clone, CLONE_PARENT | JAIL_NAMESPACES | CLONE_NEWNET | SIGCHLD, NULL, NULL, NULL,
                         NULL);
    if (pid == 0) {
        close(chan[0]);
        waiting_child(chan[1], sock, uid, gid, waiting_root_size);
    }
    if (pid < 0) {
        waiting_off = 1; /* the request that needs it will report why, on the usual path */
        goto out;
    }
    close(sync_fds[0]);
    sync_fds[0] = -1;
    report(sock, REPORT_WAITING, pid);
    err_fd = -1;
    if (setjmp(escape) == 0) {
        fail_escape = &escape;
        write_maps(pid, uid, gid);
        if (write(sync_fds[1], "g", 1) != 1)
            fail(AIOGAOL_STEP_CLONE_INIT, errno, "sync pipe");
        waiting_pid = pid;
        waiting_chan = chan[0];
        chan[0] = -1;
    } else {
        waiting_off = 1;
        report(sock, REPORT_DISCARDED, pid); /* it exits when the sync pipe closes below */
    }
    fail_escape = NULL;
out:
    if (!waiting_pid)
        forget_waiting_ops();
    if (chan[0] >= 0)
        close(chan[0]);
    if (chan[1] >= 0)
        close(chan[1]);
    if (sync_fds[0] >= 0)
        close(sync_fds[0]);
    if (sync_fds[1] >= 0)
        close(sync_fds[1]);
    sync_fds[0] = sync_fds[1] = -1;
}

/* Hand the request to the waiting init, then write its PID on the request's error pipe; 0 if it could not
 * take the request (it died: reported, for the server to reap), and the request takes the usual path.
 * The request goes first so that a failed hand-over leaves no PID record behind; should the spawner die
 * between the two, the init is one the server was told of (REPORT_WAITING) and reaps at retirement. */
static int hand_over(int sock, const char *buf, size_t len)
{
    static char cbuf[CMSG_SPACE(sizeof(int) * MAX_REQ_FDS)];
    struct msghdr msg;
    struct iovec iov;
    struct cmsghdr *c;
    pid_t pid = waiting_pid;
    int chan = waiting_chan;
    ssize_t n;
    waiting_pid = 0;
    waiting_chan = -1;
    forget_waiting_ops();
    memset(&msg, 0, sizeof msg);
    iov.iov_base = (void *)buf;
    iov.iov_len = len;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)req_n);
    c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)req_n);
    memcpy(CMSG_DATA(c), req_from, sizeof(int) * (size_t)req_n);
    while ((n = sendmsg(chan, &msg, MSG_NOSIGNAL)) < 0 && errno == EINTR)
        ;
    close(chan); /* the request is queued; EOF after it */
    if (n < 0) {
        report(sock, REPORT_DISCARDED, pid);
        return 0;
    }
    send_record(err_fd, AIOGAOL_RECORD_PID, AIOGAOL_STEP_NONE, 0, (int)pid, "");
    mark(AIOGAOL_STEP_HAND_OVER);
    return 1;
}

static void handle_request(int sock, const char *buf, size_t len, uint64_t received)
{
    parse_request(buf, len);
    mark_at(AIOGAOL_STEP_ARGS, received);
    if (plan.cgroup_fd >= 0)
        /* Where clone3 lacks CLONE_INTO_CGROUP the helper moves itself into the cgroup first: a
         * one-shot helper may, the spawner may not. */
        fail(AIOGAOL_STEP_ARGS, EINVAL, "cgroup placement goes through the one-shot helper");
    if (plan.unshare_net && !plan.no_namespaces) {
        long want_uid = plan.inside_uid < 0 ? (long)getuid() : plan.inside_uid;
        long want_gid = plan.inside_gid < 0 ? (long)getgid() : plan.inside_gid;
        if (!plan_starts_standard()) {
            watch_init(start_jail()); /* a plan no prebuilt jail fits (not one of aiogaol's own) */
            return;
        }
        size_t blen = 0;
        char *blob = ops_blob(&blen);
        int full_fits = same_bytes(blob, blen, waiting_ops, waiting_ops_len);
        ops_steady = same_bytes(blob, blen, last_ops, last_ops_len);
        free(last_ops);
        last_ops = blob;
        last_ops_len = blob ? blen : 0;
        if (waiting_pid && (mounts_changed() || want_uid != waiting_uid || want_gid != waiting_gid ||
                            plan.root_size != waiting_root_size ||
                            (waiting_ops && (!full_fits || !waiting_ready() || !binds_current()))))
            drop_waiting(sock);
        /* The next waiting init is made for the ids and root size the last jail used. */
        waiting_uid = want_uid;
        waiting_gid = want_gid;
        waiting_root_size = plan.root_size;
        if (waiting_pid) {
            pid_t pid = waiting_pid;
            if (hand_over(sock, buf, len)) {
                watch_init(pid);
                return;
            }
        }
    }
    watch_init(start_jail());
}

static void raise_soft_limit(int resource)
{
    struct rlimit rl;
    if (getrlimit(resource, &rl) == 0 && rl.rlim_cur != rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        (void)setrlimit(resource, &rl); /* best effort: the limit stays as it was */
    }
}

int aiogaol_serve(int sock)
{
    char *buf = NULL;
    size_t cap = 0, len;
    int i, truncated;

    /* A server that gave up on a spawn closes its end of the error pipe: a write there must fail,
     * not kill the spawner. */
    signal(SIGPIPE, SIG_IGN);
    /* The spawner lives as long as its server, so its own limits must not be the server's of the moment
     * it started (a first spawn made during a brief shortage): soft fds and processes at the hard limit.
     * Every jail gets the server's rlimits of its own spawn, sent with the request (see _jail.py). */
    raise_soft_limit(RLIMIT_NOFILE);
    raise_soft_limit(RLIMIT_NPROC);
    /* Whatever the server had open without O_CLOEXEC is not the spawner's to keep open. */
    if (close_all_except(&sock, 1) < 0 || chdir("/") < 0)
        return 1;
    mounts_fd = open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC);
    if (mounts_fd < 0)
        waiting_off = 1; /* no way to tell a stale mount view: no init made ahead of time */
    for (;;) {
        jmp_buf escape;
        uint64_t received;
        if (!waiting_pid && !waiting_off && waiting_uid >= 0) {
            /* Made once the last jail's init has exited (or has run for a while), and only while no
             * request is pending: a clone into fresh namespaces made at once would run beside the jail
             * just started, on the same CPUs and the same kernel locks (mounts, network namespaces),
             * and slow it by about as much as it saves the next one. */
            struct pollfd p[2];
            int n = 1, r;
            p[0].fd = sock;
            p[0].events = POLLIN;
            p[0].revents = 0;
            if (last_init >= 0) {
                p[1].fd = last_init;
                p[1].events = POLLIN;
                p[1].revents = 0;
                n = 2;
            }
            r = poll(p, (nfds_t)n, n == 2 ? WAITING_AFTER_MS : WAITING_IDLE_MS);
            if (r == 0 || (r > 0 && !(p[0].revents & (POLLIN | POLLHUP)))) {
                forget_last_init();
                make_waiting(sock);
            }
        }
        if (waiting_pid) {
            /* While a waiting init holds its copy of the host's mount tree, a change on the host drops
             * it at once: an unmounted filesystem must not stay busy in an idle copy. */
            struct pollfd p[2];
            p[0].fd = sock;
            p[0].events = POLLIN;
            p[0].revents = 0;
            p[1].fd = mounts_fd;
            p[1].events = POLLPRI;
            p[1].revents = 0;
            if (poll(p, 2, -1) > 0 && (p[1].revents & (POLLPRI | POLLERR))) {
                /* Dropped even with a request pending: this poll took the change, so a check at the
                 * hand-over would not see it again. */
                drop_waiting(sock);
                continue;
            }
        }
        if (!recv_request(sock, &buf, &cap, &len, &truncated))
            break; /* EOF: the server closed its end, or is gone */
        received = now_ns();
        err_fd = req_n > 0 ? req_from[0] : -1;
        if (setjmp(escape) == 0) {
            fail_escape = &escape;
            if (truncated)
                fail(AIOGAOL_STEP_ARGS, E2BIG, "request");
            handle_request(sock, buf, len, received);
        }
        /* Done or failed, the spawner keeps nothing of the request: init holds its own copies. */
        fail_escape = NULL;
        for (i = 0; i < 2; i++) {
            if (sync_fds[i] >= 0)
                close(sync_fds[i]);
            sync_fds[i] = -1;
        }
        for (i = 0; i < req_n; i++)
            close(req_from[i]);
        req_n = 0;
        err_fd = -1;
    }
    /* The waiting init exits at EOF on its socket, which closes with the spawner; the server, which
     * was told of it, reaps it. */
    free(buf);
    return 0;
}

/* ------------------------------------------------------------------------------------------------ */
/* Server side                                                                                       */

int aiogaol_spawn_helper(const char *path, const char *argblob, size_t arglen, int argc,
                         const char *envblob, size_t envlen, int envc, const int *fd_map, int n_pairs)
{
    char **argv, **envp;
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    sigset_t none, all;
    pid_t pid = -1;
    int rc, i;

    if (argc < 1 || envc < 0 || argc > 65536 || envc > 65536)
        return -EINVAL;
    argv = malloc(sizeof(char *) * (size_t)(argc + envc + 2));
    if (!argv)
        return -ENOMEM;
    envp = argv + argc + 1;
    if (!split_blob(argblob, argblob + arglen, argc, argv) ||
        !split_blob(envblob, envblob + envlen, envc, envp)) {
        free(argv);
        return -EINVAL;
    }
    if ((rc = posix_spawn_file_actions_init(&fa)) != 0) {
        free(argv);
        return -rc;
    }
    if ((rc = posix_spawnattr_init(&attr)) != 0) {
        posix_spawn_file_actions_destroy(&fa);
        free(argv);
        return -rc;
    }
    for (i = 0; i < n_pairs && rc == 0; i++)
        rc = posix_spawn_file_actions_adddup2(&fa, fd_map[2 * i], fd_map[2 * i + 1]);
    sigemptyset(&none);
    sigfillset(&all);
    sigdelset(&all, SIGKILL);
    sigdelset(&all, SIGSTOP);
    if (rc == 0)
        rc = posix_spawnattr_setsigmask(&attr, &none);
    if (rc == 0)
        rc = posix_spawnattr_setsigdefault(&attr, &all);
    if (rc == 0)
        rc = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    if (rc == 0)
        rc = posix_spawn(&pid, path, &fa, &attr, argv, envp);
    posix_spawnattr_destroy(&attr);
    posix_spawn_file_actions_destroy(&fa);
    free(argv);
    return rc == 0 ? (int)pid : -rc;
}

/* ------------------------------------------------------------------------------------------------ */
/* Probes for aiogaol.check()                                                                        */

static int probe_child(void *arg)
{
    (void)arg;
    _exit(0);
}

/* Try, rather than guess from sysctls, whether this user may create a user namespace.  CLONE_VM and
 * CLONE_VFORK keep it cheap in a large server; the child only exits. */
int aiogaol_probe_userns(void)
{
    char stack[16384] __attribute__((aligned(16)));
    int status;
    pid_t pid = clone(probe_child, stack + sizeof stack, CLONE_NEWUSER | CLONE_VM | CLONE_VFORK | SIGCHLD, NULL);
    if (pid < 0)
        return errno;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    return 0;
}

int aiogaol_landlock_abi(void)
{
    long v = syscall(SYS_landlock_create_ruleset, NULL, 0, LL_CREATE_RULESET_VERSION);
    return v < 0 ? -errno : (int)v;
}
