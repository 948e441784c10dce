/*
 * The sandbox's resident: the agent that a sandbox (aiogaol.open_sandbox) runs in place of a program.
 *
 * It is started exactly where a jail's program would exec (see run_program in program.c), after the
 * identity switch, rlimits, no_new_privs, the capability drops, Landlock and seccomp: it is as jailed as
 * any program of the sandbox, so a program that took it over would gain nothing it did not have.  It is
 * non-dumpable, so the sandbox's programs (same uid) can neither ptrace it nor reach its fds through
 * /proc.  A program can still kill it (same uid, same Landlock domain): init then ends the sandbox, which
 * fails closed.
 *
 * It talks to the server over one SOCK_SEQPACKET socket (the only fd it keeps): one request per message,
 * the fds of the call (pipes made by the server) as SCM_RIGHTS; one fixed-size reply per event.  It
 * starts programs (a child of its own, in a session of its own, with the call's rlimits, its fds on 0..n-1,
 * the call's cwd and environment), signals a call's process group, and reads and writes files beneath the
 * workspace (openat2 RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS from an fd of the workspace, in a forked
 * worker, so a planted symlink never leads outside and a slow pipe never stalls the loop).  It reaps its
 * children (it is their parent) and reports each one's wait status and rusage.  With an idle timeout it
 * exits when no call has been running for that long; init then ends the jail.
 *
 * The server treats everything said here as untrusted input (see aiogaol/_sandbox.py).
 */
#define _GNU_SOURCE
#include "agent.h"
#include "jail.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_MSG 65536
#define MAX_CALLS 1024
#define MAX_FDS 8
#define MAX_ARGS 4096

struct call {
    pid_t pid; /* 0: free slot */
    uint32_t id;
    int background; /* does not keep the sandbox from being idle (the code kernel) */
};

static struct call calls[MAX_CALLS];
static int n_active; /* calls running that are not background */
static int sock = -1;
static int ws_fd = -1;
static char msg[MAX_MSG + 1] __attribute__((aligned(16)));

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void reply(uint32_t kind, uint32_t id, int32_t a, int32_t b, const struct rusage *ru)
{
    struct aiogaol_agent_reply r;
    memset(&r, 0, sizeof r);
    r.kind = kind;
    r.id = id;
    r.a = a;
    r.b = b;
    if (ru) {
        r.utime_ns = (uint64_t)ru->ru_utime.tv_sec * 1000000000u + (uint64_t)ru->ru_utime.tv_usec * 1000u;
        r.stime_ns = (uint64_t)ru->ru_stime.tv_sec * 1000000000u + (uint64_t)ru->ru_stime.tv_usec * 1000u;
        r.maxrss = (uint64_t)ru->ru_maxrss * 1024u;
    }
    /* The server reads on; if it is gone, EOF on our socket ends us at the next poll. */
    while (send(sock, &r, sizeof r, MSG_NOSIGNAL) < 0 && errno == EINTR)
        ;
}

static struct call *slot_for(pid_t pid)
{
    int i;
    for (i = 0; i < MAX_CALLS; i++)
        if (calls[i].pid == pid)
            return &calls[i];
    return NULL;
}

static void close_fds(const int *fds, int n)
{
    int i;
    for (i = 0; i < n; i++)
        if (fds[i] >= 0)
            close(fds[i]);
}

/* ------------------------------------------------------------------------------------------------ */
/* exec: a program of the sandbox                                                                    */


static struct {
    char *argv[MAX_ARGS + 1];
    char *envp[MAX_ARGS + 1];
    const char *cwd;
    const struct aiogaol_agent_rlimit *rl;
    uint32_t n_rl;
    int32_t umask;
    int fds[MAX_FDS];
    int n_fds;
    /* Written by the child (which shares our memory until exec): why it did not exec. */
    volatile int err, stage;
} ex;

static char child_stack[128 * 1024] __attribute__((aligned(16)));

static int child_fail(int stage, int err)
{
    ex.stage = stage;
    ex.err = err;
    _exit(127);
}

static const char *env_path(void)
{
    char **e;
    for (e = ex.envp; *e; e++)
        if (strncmp(*e, "PATH=", 5) == 0)
            return *e + 5;
    return "/usr/local/bin:/usr/bin:/bin";
}

/* The child, on a stack of its own in our memory (CLONE_VM | CLONE_VFORK: we wait until it execs). */
static int exec_child(void *arg)
{
    sigset_t none;
    int i;
    const char *prog = ex.argv[0];
    (void)arg;
    /* A session (and process group) of its own: "kill" reaches the whole call at once. */
    if (setsid() < 0)
        return child_fail(AIOGAOL_AGENT_STAGE_SETSID, errno);
    for (i = 0; i < (int)ex.n_rl; i++) {
        struct rlimit cur, rl;
        if (getrlimit(ex.rl[i].resource, &cur) < 0)
            return child_fail(AIOGAOL_AGENT_STAGE_RLIMIT, errno);
        /* A call may only lower what the sandbox has: never above the hard limit we run under. */
        rl.rlim_max = ex.rl[i].hard < cur.rlim_max ? ex.rl[i].hard : cur.rlim_max;
        rl.rlim_cur = ex.rl[i].soft < rl.rlim_max ? ex.rl[i].soft : rl.rlim_max;
        if (setrlimit(ex.rl[i].resource, &rl) < 0)
            return child_fail(AIOGAOL_AGENT_STAGE_RLIMIT, errno);
    }
    /* The call's fds onto 0..n-1: first above every target, so no dup2 clobbers a later source. */
    for (i = 0; i < ex.n_fds; i++) {
        int high = fcntl(ex.fds[i], F_DUPFD, MAX_FDS + 3);
        if (high < 0)
            return child_fail(AIOGAOL_AGENT_STAGE_FDS, errno);
        ex.fds[i] = high;
    }
    for (i = 0; i < ex.n_fds; i++)
        if (dup2(ex.fds[i], i) < 0)
            return child_fail(AIOGAOL_AGENT_STAGE_FDS, errno);
    /* Everything else goes: our socket, the workspace fd, the other calls' pipes. */
    if (syscall(SYS_close_range, (unsigned)ex.n_fds, ~0U, 0) < 0)
        return child_fail(AIOGAOL_AGENT_STAGE_FDS, errno);
    if (chdir(ex.cwd) < 0)
        return child_fail(AIOGAOL_AGENT_STAGE_CHDIR, errno);
    if (ex.umask >= 0)
        umask((mode_t)(ex.umask & 0777));
    sigemptyset(&none);
    if (sigprocmask(SIG_SETMASK, &none, NULL) < 0)
        return child_fail(AIOGAOL_AGENT_STAGE_FDS, errno);
    if (strchr(prog, '/')) {
        execve(prog, ex.argv, ex.envp);
        if (errno == ENOENT && access(prog, F_OK) == 0)
            return child_fail(AIOGAOL_AGENT_STAGE_INTERPRETER, ENOENT);
        return child_fail(AIOGAOL_AGENT_STAGE_EXEC, errno);
    } else {
        char buf[4096];
        const char *p = env_path();
        int saved = ENOENT;
        size_t pl = strlen(prog);
        for (;; p++) {
            const char *end = strchrnul(p, ':');
            size_t dl = (size_t)(end - p), k = 0;
            if (dl + pl + 2 <= sizeof buf) {
                if (dl == 0) {
                    buf[k++] = '.';
                } else {
                    memcpy(buf, p, dl);
                    k = dl;
                }
                buf[k++] = '/';
                memcpy(buf + k, prog, pl + 1);
                execve(buf, ex.argv, ex.envp);
                if (errno == ENOENT && access(buf, F_OK) == 0)
                    return child_fail(AIOGAOL_AGENT_STAGE_INTERPRETER, ENOENT);
                if (errno == EACCES)
                    saved = EACCES;
                else if (errno != ENOENT && errno != ENOTDIR && errno != ESTALE)
                    return child_fail(AIOGAOL_AGENT_STAGE_EXEC, errno);
            }
            if (*end == '\0')
                break;
            p = end;
        }
        return child_fail(AIOGAOL_AGENT_STAGE_EXEC, saved);
    }
}

/* Split n NUL-terminated strings from [p, end) into vec; the pointer past them, or NULL. */
static const char *take_strings(const char *p, const char *end, uint32_t n, char **vec)
{
    uint32_t i;
    for (i = 0; i < n; i++) {
        const char *z = memchr(p, '\0', (size_t)(end - p));
        if (!z)
            return NULL;
        vec[i] = (char *)p;
        p = z + 1;
    }
    vec[n] = NULL;
    return p;
}

static struct call *free_slot(void)
{
    return slot_for(0);
}

static void do_exec(uint32_t id, const char *body, size_t len, int *fds, int n_fds)
{
    struct aiogaol_agent_exec rq;
    const char *p, *end = body + len;
    struct call *slot;
    pid_t pid;
    if (len < sizeof rq)
        goto bad;
    memcpy(&rq, body, sizeof rq);
    p = body + sizeof rq;
    if (rq.argc < 1 || rq.argc > MAX_ARGS || rq.envc > MAX_ARGS || rq.n_rlimits > 32 || n_fds < 1)
        goto bad;
    if ((size_t)(end - p) < rq.n_rlimits * sizeof(struct aiogaol_agent_rlimit))
        goto bad;
    ex.rl = (const struct aiogaol_agent_rlimit *)p; /* msg is aligned and the header is 24 bytes: 8-aligned */
    ex.n_rl = rq.n_rlimits;
    p += rq.n_rlimits * sizeof(struct aiogaol_agent_rlimit);
    ex.cwd = p;
    p = memchr(p, '\0', (size_t)(end - p));
    if (!p)
        goto bad;
    p++;
    if (!(p = take_strings(p, end, rq.argc, ex.argv)) || !take_strings(p, end, rq.envc, ex.envp))
        goto bad;
    slot = free_slot();
    if (!slot) {
        close_fds(fds, n_fds);
        reply(AIOGAOL_AGENT_FAILED, id, EAGAIN, AIOGAOL_AGENT_STAGE_REQUEST, NULL);
        return;
    }
    memcpy(ex.fds, fds, sizeof(int) * (size_t)n_fds);
    ex.n_fds = n_fds;
    ex.umask = rq.umask;
    ex.err = 0;
    ex.stage = 0;
    pid = (pid_t)clone(exec_child, child_stack + sizeof child_stack, CLONE_VM | CLONE_VFORK | SIGCHLD, NULL);
    close_fds(fds, n_fds);
    if (pid < 0) {
        reply(AIOGAOL_AGENT_FAILED, id, errno, AIOGAOL_AGENT_STAGE_FORK, NULL);
        return;
    }
    if (ex.stage) {
        /* It ran until _exit: reaped at once (blocking for an exited child is immediate). */
        waitpid(pid, NULL, 0);
        reply(AIOGAOL_AGENT_FAILED, id, ex.err, ex.stage, NULL);
        return;
    }
    slot->pid = pid;
    slot->id = id;
    slot->background = (rq.flags & AIOGAOL_AGENT_BACKGROUND) != 0;
    if (!slot->background)
        n_active++;
    reply(AIOGAOL_AGENT_STARTED, id, (int32_t)pid, 0, NULL);
    return;
bad:
    close_fds(fds, n_fds);
    reply(AIOGAOL_AGENT_FAILED, id, EINVAL, AIOGAOL_AGENT_STAGE_REQUEST, NULL);
}

/* ------------------------------------------------------------------------------------------------ */
/* Files beneath the workspace, each in a forked worker whose exit status is 0 or an errno            */


static int open_beneath(const char *path, int flags, unsigned mode)
{
    struct open_how how;
    memset(&how, 0, sizeof how);
    /* O_NONBLOCK: a FIFO planted in the workspace must not hang the worker; a regular file is checked
     * below, and O_NONBLOCK means nothing to it. */
    how.flags = (uint64_t)(flags | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    how.mode = (flags & O_CREAT) ? (mode & 07777) : 0;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
    /* EAGAIN: a "..", walked while any rename or mount happened on the host (other jails mount all the
     * time), could not be proven to stay beneath; openat2(2) asks the caller to retry. */
    for (int tries = 0;; tries++) {
        int fd = (int)syscall(SYS_openat2, ws_fd, path, &how, sizeof how);
        if (fd >= 0 || errno != EAGAIN || tries >= 64)
            return fd;
    }
}

static void __attribute__((noreturn)) file_worker(int op, const char *path, uint64_t max, unsigned mode, int pipe_fd)
{
    static char buf[65536];
    struct stat st;
    uint64_t total = 0;
    int fd;
    signal(SIGXFSZ, SIG_IGN); /* past RLIMIT_FSIZE: EFBIG, reported, rather than death */
    fd = open_beneath(path, op == AIOGAOL_AGENT_WRITE ? (O_WRONLY | O_CREAT) : O_RDONLY, mode);
    if (fd < 0)
        _exit(errno & 0xff);
    if (fstat(fd, &st) < 0)
        _exit(errno & 0xff);
    if (!S_ISREG(st.st_mode))
        _exit(S_ISDIR(st.st_mode) ? EISDIR : EINVAL);
    if (fcntl(fd, F_SETFL, 0) < 0)
        _exit(errno & 0xff);
    if (op == AIOGAOL_AGENT_READ) {
        if ((uint64_t)st.st_size > max)
            _exit(EFBIG);
        for (;;) {
            ssize_t n = read(fd, buf, sizeof buf), off = 0;
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0)
                _exit(errno & 0xff);
            if (n == 0)
                _exit(0);
            total += (uint64_t)n;
            if (total > max)
                _exit(EFBIG); /* it grew while we read */
            while (off < n) {
                ssize_t w = write(pipe_fd, buf + off, (size_t)(n - off));
                if (w < 0 && errno == EINTR)
                    continue;
                if (w <= 0)
                    _exit(EPIPE);
                off += w;
            }
        }
    }
    if (ftruncate(fd, 0) < 0)
        _exit(errno & 0xff);
    for (;;) {
        ssize_t n = read(pipe_fd, buf, sizeof buf), off = 0;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            _exit(errno & 0xff);
        if (n == 0)
            break;
        total += (uint64_t)n;
        if (total > max) {
            ftruncate(fd, 0);
            _exit(EFBIG);
        }
        while (off < n) {
            ssize_t w = write(fd, buf + off, (size_t)(n - off));
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0)
                _exit(errno & 0xff);
            off += w;
        }
    }
    if (close(fd) < 0)
        _exit(errno & 0xff);
    _exit(0);
}

static void do_file(int op, uint32_t id, const char *body, size_t len, int *fds, int n_fds)
{
    struct aiogaol_agent_file rq;
    struct call *slot;
    const char *path;
    pid_t pid;
    if (len < sizeof rq + 1 || n_fds != 1 || body[len - 1] != '\0') {
        close_fds(fds, n_fds);
        reply(AIOGAOL_AGENT_FAILED, id, EINVAL, AIOGAOL_AGENT_STAGE_REQUEST, NULL);
        return;
    }
    memcpy(&rq, body, sizeof rq);
    path = body + sizeof rq;
    slot = free_slot();
    if (!slot) {
        close_fds(fds, n_fds);
        reply(AIOGAOL_AGENT_FAILED, id, EAGAIN, AIOGAOL_AGENT_STAGE_REQUEST, NULL);
        return;
    }
    pid = fork();
    if (pid == 0) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        close(sock);
        file_worker(op, path, rq.max, rq.mode, fds[0]);
    }
    close_fds(fds, n_fds);
    if (pid < 0) {
        reply(AIOGAOL_AGENT_FAILED, id, errno, AIOGAOL_AGENT_STAGE_FORK, NULL);
        return;
    }
    slot->pid = pid;
    slot->id = id;
    slot->background = 0;
    n_active++;
    reply(AIOGAOL_AGENT_STARTED, id, (int32_t)pid, 0, NULL);
}

/* ------------------------------------------------------------------------------------------------ */
/* The loop                                                                                          */

static void do_signal(uint32_t id, const char *body, size_t len)
{
    uint32_t target, group;
    int32_t sig;
    int i, err = ESRCH;
    if (len < 12) {
        reply(AIOGAOL_AGENT_FAILED, id, EINVAL, AIOGAOL_AGENT_STAGE_REQUEST, NULL);
        return;
    }
    memcpy(&target, body, 4);
    memcpy(&sig, body + 4, 4);
    memcpy(&group, body + 8, 4);
    for (i = 0; i < MAX_CALLS; i++) {
        if (calls[i].pid > 0 && calls[i].id == target) {
            /* The call's process group (it leads a session of its own), or its first process alone.  Not
             * yet reaped, so the PID (and the group's ID, the same number) is still the call's. */
            if (group)
                err = kill(-calls[i].pid, sig) == 0 || kill(calls[i].pid, sig) == 0 ? 0 : errno;
            else
                err = kill(calls[i].pid, sig) == 0 ? 0 : errno;
            break;
        }
    }
    reply(AIOGAOL_AGENT_ACK, id, err, 0, NULL);
}

/* BUSY: a background call (the code kernel) counts as running while the server says so (a cell runs in
 * it), so the idle timeout never ends a sandbox in the middle of a cell. */
static void do_busy(uint32_t id, const char *body, size_t len)
{
    uint32_t target, busy;
    int i, err = ESRCH;
    if (len < 8) {
        reply(AIOGAOL_AGENT_FAILED, id, EINVAL, AIOGAOL_AGENT_STAGE_REQUEST, NULL);
        return;
    }
    memcpy(&target, body, 4);
    memcpy(&busy, body + 4, 4);
    for (i = 0; i < MAX_CALLS; i++) {
        if (calls[i].pid > 0 && calls[i].id == target) {
            int background = busy ? 0 : 1;
            if (calls[i].background != background) {
                n_active += background ? -1 : 1;
                calls[i].background = background;
            }
            err = 0;
            break;
        }
    }
    reply(AIOGAOL_AGENT_ACK, id, err, 0, NULL);
}

static void reap(uint64_t *last)
{
    for (;;) {
        struct rusage ru;
        int st;
        pid_t pid = wait4(-1, &st, WNOHANG, &ru);
        struct call *c;
        if (pid <= 0)
            return;
        c = slot_for(pid);
        if (!c)
            continue;
        /* What is left of the call's process group ends with its first process, as a jail's orphans end
         * with its program; a process that left the group (setsid) lives on in the sandbox. */
        kill(-pid, SIGKILL);
        reply(AIOGAOL_AGENT_EXITED, c->id, st, 0, &ru);
        if (!c->background)
            n_active--;
        c->pid = 0;
        *last = mono_ms();
    }
}

static int recv_request(int *fds, int *n_fds, size_t *len)
{
    union {
        char buf[CMSG_SPACE(sizeof(int) * MAX_FDS)];
        struct cmsghdr align;
    } cbuf;
    struct iovec iov = {msg, MAX_MSG};
    struct msghdr mh;
    struct cmsghdr *cm;
    ssize_t n;
    memset(&mh, 0, sizeof mh);
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cbuf.buf;
    mh.msg_controllen = sizeof cbuf.buf;
    *n_fds = 0;
    do
        n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (n <= 0)
        return -1; /* EOF: the server closed the sandbox (or died) */
    for (cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
            int k = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int)), i;
            for (i = 0; i < k; i++) {
                int fd;
                memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof fd);
                if (*n_fds < MAX_FDS)
                    fds[(*n_fds)++] = fd;
                else
                    close(fd);
            }
        }
    }
    if (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
        close_fds(fds, *n_fds);
        *n_fds = 0;
        *len = 0;
        return 0;
    }
    *len = (size_t)n;
    return 0;
}

void aiogaol_agent_main(int sock_fd, const char *workspace, int err_fd, long idle_ms)
{
    sigset_t chld;
    struct pollfd pfd[2];
    int sfd;
    uint64_t last;
    sock = sock_fd;
    /* Our own memory and fds stay ours: no ptrace, no /proc/PID/fd, no /proc/PID/mem for programs of
     * the same uid. */
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0)
        aiogaol_agent_fail(err_fd, errno, "PR_SET_DUMPABLE");
    ws_fd = open(workspace, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (ws_fd < 0)
        aiogaol_agent_fail(err_fd, errno, workspace);
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    if (sigprocmask(SIG_BLOCK, &chld, NULL) < 0)
        aiogaol_agent_fail(err_fd, errno, "sigprocmask");
    sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0)
        aiogaol_agent_fail(err_fd, errno, "signalfd");
    /* Ready: EOF on the error pipe tells the server the sandbox is up, as an exec would. */
    close(err_fd);
    last = mono_ms();
    pfd[0].fd = sock;
    pfd[0].events = POLLIN;
    pfd[1].fd = sfd;
    pfd[1].events = POLLIN;
    for (;;) {
        int timeout = -1, r;
        if (idle_ms > 0 && n_active == 0) {
            uint64_t now = mono_ms(), due = last + (uint64_t)idle_ms;
            timeout = now >= due ? 0 : (int)(due - now > 1000000 ? 1000000 : due - now);
        }
        r = poll(pfd, 2, timeout);
        if (r < 0 && errno != EINTR)
            _exit(126);
        /* Idle only when nothing is pending either: a request already sent is never lost to the timer. */
        if (r == 0 && idle_ms > 0 && n_active == 0 && mono_ms() >= last + (uint64_t)idle_ms) {
            reply(AIOGAOL_AGENT_IDLE, 0, 0, 0, NULL);
            _exit(0);
        }
        if (r <= 0)
            continue;
        if (pfd[1].revents & POLLIN) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si)
                ;
            reap(&last);
        }
        if (pfd[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            int fds[MAX_FDS], n_fds;
            size_t len;
            struct aiogaol_agent_request hd;
            if (recv_request(fds, &n_fds, &len) < 0)
                _exit(0);
            last = mono_ms();
            if (len < sizeof hd) {
                close_fds(fds, n_fds);
                reply(AIOGAOL_AGENT_FAILED, 0, EINVAL, AIOGAOL_AGENT_STAGE_REQUEST, NULL);
                continue;
            }
            memcpy(&hd, msg, sizeof hd);
            msg[len] = '\0';
            switch (hd.op) {
            case AIOGAOL_AGENT_EXEC:
                do_exec(hd.id, msg + sizeof hd, len - sizeof hd, fds, n_fds);
                break;
            case AIOGAOL_AGENT_SIGNAL:
                close_fds(fds, n_fds);
                do_signal(hd.id, msg + sizeof hd, len - sizeof hd);
                break;
            case AIOGAOL_AGENT_BUSY:
                close_fds(fds, n_fds);
                do_busy(hd.id, msg + sizeof hd, len - sizeof hd);
                break;
            case AIOGAOL_AGENT_WRITE:
            case AIOGAOL_AGENT_READ:
                do_file((int)hd.op, hd.id, msg + sizeof hd, len - sizeof hd, fds, n_fds);
                break;
            default:
                close_fds(fds, n_fds);
                reply(AIOGAOL_AGENT_FAILED, hd.id, EINVAL, AIOGAOL_AGENT_STAGE_REQUEST, NULL);
            }
        }
    }
}

void aiogaol_agent_fail(int err_fd, int err, const char *detail)
{
    struct aiogaol_record rec;
    size_t i;
    memset(&rec, 0, sizeof rec);
    rec.kind = AIOGAOL_RECORD_FAILURE;
    rec.step = AIOGAOL_STEP_AGENT;
    rec.err = err;
    for (i = 0; detail && detail[i] && i + 1 < sizeof rec.detail; i++)
        rec.detail[i] = detail[i];
    if (err_fd >= 0)
        while (write(err_fd, &rec, sizeof rec) < 0 && errno == EINTR)
            ;
    _exit(127);
}

int aiogaol_agent_wire_size(int which)
{
    switch (which) {
    case 0: return (int)sizeof(struct aiogaol_agent_request);
    case 1: return (int)sizeof(struct aiogaol_agent_exec);
    case 2: return (int)sizeof(struct aiogaol_agent_rlimit);
    case 3: return (int)sizeof(struct aiogaol_agent_file);
    case 4: return (int)sizeof(struct aiogaol_agent_reply);
    default: return -1;
    }
}
