/*
 * Init: PID 1 of the jail's namespaces, the server's own child (CLONE_PARENT).
 *
 * Its fds moved to their numbers (place_fds, init_fds), the id maps awaited (init_child), its niceness
 * and network namespace, loopback up, the jail built (mounts.c), then the program cloned (program.c);
 * once the program has exec'd, init drops its own privileges (drop_init) and supervises: signals
 * forwarded, orphans reaped, the jail killed when the program exits or the server goes, the program's
 * exact wait status reported on the lifeline.
 */
#include "core.h"

/* ------------------------------------------------------------------------------------------------ */
/* Init: PID 1 of the jail                                                                           */

pid_t init_pid;

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

void kill_jail(pid_t program)
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

int loopback_done; /* a waiting init brought lo up before its request (spawner.c) */

/* lo up in the jail's own network namespace (ipv4 127.0.0.1 and, where IPv6 is on, ::1 come with it):
 * a loopback reachable from this jail only, as programs that serve themselves on 127.0.0.1 expect. */
void loopback_up(void)
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

void drop_init(pid_t program)
{
    struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];
    struct sock_fprog prog;
    /* The bounding and ambient sets are empty and the securebits locked since before the clone
     * (limit_capabilities, in run_init): what is left is the capabilities themselves. */
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

/* The rusage of one reaped process added to figures (user ns, system ns, the largest max RSS in KiB);
 * NULL: not counted.  Init's filter allows wait4, which gives it, but not getrusage. */
void add_usage(uint64_t *figures, const struct rusage *ru)
{
    if (!figures)
        return;
    figures[0] += (uint64_t)ru->ru_utime.tv_sec * 1000000000u + (uint64_t)ru->ru_utime.tv_usec * 1000u;
    figures[1] += (uint64_t)ru->ru_stime.tv_sec * 1000000000u + (uint64_t)ru->ru_stime.tv_usec * 1000u;
    if ((uint64_t)ru->ru_maxrss > figures[2])
        figures[2] = (uint64_t)ru->ru_maxrss;
}

/* Init's watch over the program, until it has reaped it; returns its wait status.  Signals come on the
 * signalfd sfd: each catchable one is forwarded, SIGRTMAX (the server's "kill the program") becomes
 * SIGKILL of the program while init lives on to reap it and its orphans and to report, so the jail's
 * usage stays whole (SIGKILL to init itself would lose the children's rusage), and SIGCHLD reaps.  The
 * lifeline's EOF (the server is gone) and a sandbox's deadline (kept here, since no program of the jail
 * can stop or kill PID 1) kill the jail.  For a spawned jail (run_init) and a warm one (zygote.c). */
int supervise(pid_t child, int sfd, uint64_t *figures)
{
    struct pollfd pfd[2];
    int status = 0, done = 0;
    uint64_t deadline = now_ns() / 1000000u + plan.deadline_ms;

    pfd[0].fd = sfd;
    pfd[0].events = POLLIN;
    pfd[1].fd = plan.lifeline_fd;
    pfd[1].events = POLLIN;
    while (!done) {
        int timeout = -1;
        if (plan.deadline_ms) {
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
            kill_jail(child); /* the server is gone, or gave up on the job */
            _exit(137);
        }
        if (pfd[0].revents & POLLIN) {
            struct signalfd_siginfo si;
            ssize_t n = read(sfd, &si, sizeof si);
            if (n != (ssize_t)sizeof si)
                continue;
            if (si.ssi_signo == SIGCHLD) {
                struct rusage ru;
                pid_t p;
                int st;
                while ((p = wait4(-1, &st, WNOHANG, &ru)) > 0) {
                    add_usage(figures, &ru);
                    if (p == child) {
                        status = st;
                        done = 1;
                    }
                }
            } else if ((int)si.ssi_signo == SIGRTMAX) {
                kill(child, SIGKILL);
            } else {
                kill(child, (int)si.ssi_signo);
            }
        }
    }
    return status;
}

/* Once the program has ended: take its orphans down with it and reap them, so that their CPU time counts
 * in the rusage the server reads from init (and in figures). */
void reap_jail(pid_t child, uint64_t *figures)
{
    kill_jail(child);
    for (;;) {
        /* In a PID namespace nothing survives kill(-1, SIGKILL), so blocking is bounded; in the
         * fallback, a process forked during the kill could outlive it, so only what is dead is taken. */
        struct rusage ru;
        errno = 0;
        if (wait4(-1, NULL, __WALL | (plan.no_namespaces ? WNOHANG : 0), &ru) <= 0) {
            if (errno != EINTR)
                break;
            continue;
        }
        add_usage(figures, &ru);
    }
}

void run_init(void)
{
    sigset_t all;
    int sfd, status;
    pid_t child;

    /* Init never runs beside the program unfiltered (see drop_init): no filter, no jail. */
    if (init_len == 0)
        fail(AIOGAOL_STEP_DROP_INIT, EINVAL, "no seccomp filter for init (--init-filter)");
    if (plan.no_namespaces) {
        init_pid = getpid();
        if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) < 0)
            fail(AIOGAOL_STEP_FORK_PROGRAM, errno, "PR_SET_CHILD_SUBREAPER");
    } else {
        if (plan.loopback && plan.unshare_net && !loopback_done)
            loopback_up();
        build_jail();
        mark(AIOGAOL_STEP_HOSTNAME);
    }
    /* The bounds of every capability the jail will hold, set once for init and the program it clones
     * (program.c): bounding and ambient sets emptied, securebits locked (NO_SETUID_FIXUP among them). */
    limit_capabilities();
    /* Before the program exists, init takes its identity (a root server's init built the jail as root,
     * for root-only bind sources, and is nobody from here on, on the host as in the jail), keeping its
     * capabilities for the program's own drops (NO_SETUID_FIXUP, set just above; drop_init clears them). */
    take_identity(1);
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

    status = supervise(child, sfd, NULL);
    mark_lifeline(AIOGAOL_STEP_REAP_PROGRAM);
    reap_jail(child, NULL);
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

/* Our PID in the host's PID namespace, from the host's /proc (a new init has not mounted its own yet);
 * 0 if unknown. */
pid_t host_pid(void)
{
    char buf[32];
    ssize_t n = readlink("/proc/self", buf, sizeof buf - 1);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    return (pid_t)strtol(buf, NULL, 10);
}

int sync_fds[2] = {-1, -1}; /* the spawner lets init go (after writing its id maps) through this pipe */

void place_fds(void)
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
void init_fds(int also)
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

/* The slice a niced jail's processes run in: longer than any default slice (0.7 to 3 ms by the number
 * of CPUs), within the kernel's 0.1 to 100 ms. */
#define JAIL_SLICE_NS 10000000ULL

/* sched_attr as far as its first version (SCHED_ATTR_SIZE_VER0): no utilisation clamps. */
struct sched_attr_v0 {
    uint32_t size, policy;
    uint64_t flags;
    int32_t nice;
    uint32_t priority;
    uint64_t runtime, deadline, period;
};

/* A long time slice for background work, kept across fork: kernel 6.12's EEVDF takes sched_runtime as
 * the slice of a SCHED_OTHER or SCHED_BATCH task.  Why: a running task is not preempted inside its slice
 * (RUN_TO_PARITY) unless the task that wakes has a shorter slice than it (PREEMPT_SHORT).  With equal
 * slices, a server woken while a jail's process runs on its CPU waits for the next tick, up to 4 ms at
 * HZ=250, whatever the niceness; with ours longer, its wakeup cuts ours short (docs/spawn.md measures
 * it).  Best effort: an older kernel ignores the slice, another policy (idle, real-time) is left alone,
 * and nothing of the jail depends on it.  sched_setattr sets the niceness too: it is read just before. */
static void lengthen_slice(void)
{
    struct sched_attr_v0 attr;
    memset(&attr, 0, sizeof attr);
    if (syscall(SYS_sched_getattr, 0, &attr, sizeof attr, 0) < 0)
        return;
    if ((attr.policy != SCHED_OTHER && attr.policy != SCHED_BATCH) || attr.runtime >= JAIL_SLICE_NS)
        return;
    attr.size = sizeof attr;
    attr.runtime = JAIL_SLICE_NS;
    attr.flags &= 0x01; /* SCHED_FLAG_RESET_ON_FORK, the caller's to keep; no other flag */
    (void)syscall(SYS_sched_setattr, 0, &attr, 0);
}

/* Our niceness raised to nice (never lowered: raising needs no privilege), and a niced process's slice
 * lengthened (lengthen_slice); -1 with errno on failure.  For the spawner (--serve FD NICE), for init
 * (apply_nice) and for a PythonPool's warm interpreter (aiogaol_raise_nice). */
int raise_nice(int nice)
{
    int now;
    errno = 0;
    now = getpriority(PRIO_PROCESS, 0);
    if (now == -1 && errno)
        return -1;
    if (nice > now && setpriority(PRIO_PROCESS, 0, nice) < 0)
        return -1;
    if (nice > 0)
        lengthen_slice();
    return 0;
}

int aiogaol_raise_nice(int nice)
{
    return raise_nice(nice) < 0 ? -errno : 0;
}

/* The jail's niceness, set by init before it builds anything: the jail's set-up and its program then
 * both yield the CPU to the server (see Limits.nice).  A jail cannot lower it again, having no
 * CAP_SYS_NICE in the host's user namespace. */
void apply_nice(void)
{
    if (plan.nice >= 0 && raise_nice(plan.nice) < 0)
        fail(AIOGAOL_STEP_PRIORITY, errno, "setpriority");
}

int join_cgroup_late;

/* Init's first steps: its fds in place, the rest closed, then wait for the id maps. */
void init_child(void)
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
    /* Placed in its cgroup by the spawner only now (no clone3 here): the cgroup namespace, rooted there. */
    if (join_cgroup_late && unshare(CLONE_NEWCGROUP) < 0)
        fail(AIOGAOL_STEP_UNSHARE, errno, "cgroup namespace");
    apply_nice();
    /* The network namespace is made here rather than in the clone: creating one is the dearest part of
     * a jail's namespaces, and here it is paid at the jail's niceness rather than by the spawner, whose
     * CPU time competes with the server's. */
    if (plan.unshare_net && !plan.no_namespaces && unshare(CLONE_NEWNET) < 0)
        fail(AIOGAOL_STEP_UNSHARE, errno, "network namespace");
    mark(AIOGAOL_STEP_MAKE_PRIVATE);
    run_init();
}
