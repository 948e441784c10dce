/*
 * The warm interpreter's way into a jail (aiogaol.PythonPool).
 *
 * A spawned jail is built by clones of the spawner that end in exec.  A PythonPool job must instead go
 * on running the warm Python image it was forked from, so the same steps are taken in-process, by
 * forks of the warm interpreter (the "zygote", aiogaol/_zygote.py) made with os.fork (CPython's
 * after-fork hooks then run: the random module is reseeded, the thread states are reset):
 *
 *   zygote (host namespaces; runs only aiogaol's code), for each jail, ahead of the job that will use it:
 *     os.fork ─▶ J: aiogaol_zygote_unshare (parse the helper argv, unshare user, mount, pid, ipc, uts,
 *                   cgroup); the zygote writes J's id maps from the parent user namespace (as the
 *                   spawner writes init's); aiogaol_zygote_after_maps (niceness, network namespace)
 *                os.fork ─▶ K: PID 1.  aiogaol_zygote_init_build builds the jail (mounts.c's build_jail: the
 *                              same mounts, pivot_root), then K waits for a job's fds from the zygote;
 *                              aiogaol_zygote_init_enter takes the program's identity, turns
 *                              non-dumpable, blocks every signal behind a signalfd
 *                           os.fork ─▶ P: PID 2.  aiogaol_zygote_program_enter: what run_program does
 *                                        before exec (rlimits, fds, no_new_privs, capabilities, identity,
 *                                        Landlock, seccomp with TSYNC), then a STARTED record, and back to
 *                                        Python, which runs the job's code
 *                           K: aiogaol_zygote_init_run: init's loop (forwards signals, reaps, kills the
 *                              namespace when the program ends), then the program's status and the
 *                              jail's usage (DONE) on the job's report socket
 *                J: aiogaol_zygote_relay: waits for K and reports its end (USAGE: what counts if K was
 *                   killed before DONE), then exits
 *
 * This file only calls the steps of the other roles (core.h) (parse_args, resolve_identity, build_jail, loopback_up, apply_nice, drop_init,
 * drop_capabilities, apply_landlock, read_seccomp, close_all_except, kill_jail, send_record, fail), so
 * a jail entered here is built by exactly the code that builds every other jail.
 *
 * Every failure goes through wire.c's fail(): a record (step, errno, detail) on the job's report
 * socket (--err), then _exit.  Nothing here allocates or returns to Python in a half-built state.
 */
#include "core.h"

#include <sys/signalfd.h>

/* Records of the warm path only, on the job's report socket (beside wire.c's FAILURE records). */
#define AIOGAOL_ZYGOTE_STARTED 16 /* P is in its jail, every wall up: the job's code runs next */
#define AIOGAOL_ZYGOTE_USAGE 17   /* from J: value is K's wait status; detail holds three uint64: user ns,
                                     system ns and max RSS in KiB of the whole jail */
#define AIOGAOL_ZYGOTE_DONE 18    /* from K, once the jail is empty: value is the program's wait status,
                                     detail as USAGE's, for every process of the jail K reaped */

static int zygote_sfd = -1;

/* The zygote itself, once its preloads are in: nothing of the server's nor of a job may ptrace it or
 * read its memory. */
int aiogaol_zygote_seal(void)
{
    return prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0 ? -errno : 0;
}

/* J: the plan from the helper's arguments (as the spawner gets them from _jail), then the namespaces.
 * The network namespace comes after the id maps (aiogaol_zygote_after_maps), as in init_child.  Returns
 * 1 when the program runs as another identity than ours (the zygote then maps it too). */
int aiogaol_zygote_unshare(int argc, char **argv, int report_fd)
{
    fail_escape = NULL;
    err_fd = report_fd;
    parse_args(argc, argv, NULL);
    err_fd = report_fd;
    if (plan.no_namespaces)
        fail(AIOGAOL_STEP_ARGS, EINVAL, "a PythonPool needs the namespaces (no fallback isolation)");
    if (plan.cgroup_fd >= 0)
        fail(AIOGAOL_STEP_ARGS, EINVAL, "a PythonPool places no jail in a cgroup");
    if (init_len == 0)
        fail(AIOGAOL_STEP_DROP_INIT, EINVAL, "no seccomp filter for init (--init-filter)");
    resolve_identity(getuid(), getgid());
    /* Dumpable again (the zygote is not), or the zygote, which writes our id maps, could not open our
     * /proc files: a non-dumpable process's are root's.  J holds nothing but its own job. */
    if (prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) < 0)
        fail(AIOGAOL_STEP_UNSHARE, errno, "PR_SET_DUMPABLE");
    mark(AIOGAOL_STEP_ARGS);
    if (unshare(JAIL_NAMESPACES) < 0)
        fail(AIOGAOL_STEP_UNSHARE, errno, "user+pid+mount+ipc+uts+cgroup namespaces");
    mark(AIOGAOL_STEP_UNSHARE);
    return switch_identity;
}

/* J, once the zygote has written its id maps. */
void aiogaol_zygote_after_maps(void)
{
    mark(AIOGAOL_STEP_UID_MAP);
    apply_nice();
    if (plan.unshare_net && unshare(CLONE_NEWNET) < 0)
        fail(AIOGAOL_STEP_UNSHARE, errno, "network namespace");
    mark(AIOGAOL_STEP_MAKE_PRIVATE);
}

/* J: wait for K (PID 1 of the jail), then report its status and the rusage of the whole jail, which K
 * has reaped.  J keeps only the report socket: the job's stdio and the lifeline are K's and P's. */
void __attribute__((noreturn)) aiogaol_zygote_relay(int init)
{
    struct aiogaol_record rec;
    struct rusage ru;
    uint64_t figures[3];
    int st = 0, keep[1];
    pid_t p;
    keep[0] = err_fd;
    close(0);
    close(1);
    close(2);
    close_all_except(keep, 1);
    for (;;) {
        p = wait4((pid_t)init, &st, 0, &ru);
        if (p == (pid_t)init)
            break;
        if (p < 0 && errno != EINTR)
            _exit(126);
    }
    figures[0] = (uint64_t)ru.ru_utime.tv_sec * 1000000000u + (uint64_t)ru.ru_utime.tv_usec * 1000u;
    figures[1] = (uint64_t)ru.ru_stime.tv_sec * 1000000000u + (uint64_t)ru.ru_stime.tv_usec * 1000u;
    figures[2] = (uint64_t)ru.ru_maxrss;
    memset(&rec, 0, sizeof rec);
    rec.kind = AIOGAOL_ZYGOTE_USAGE;
    rec.value = st;
    memcpy(rec.detail, figures, sizeof figures);
    send(err_fd, &rec, sizeof rec, MSG_NOSIGNAL);
    _exit(0);
}

/* K, PID 1 of the new PID namespace, before any job is known: the jail, as run_init builds it. */
void aiogaol_zygote_init_build(void)
{
    if (plan.loopback && plan.unshare_net)
        loopback_up();
    build_jail();
    mark(AIOGAOL_STEP_HOSTNAME);
}

/* K, once a job's fds are in place: the rest of what run_init does before it clones the program.
 * From here on, failures go on the job's report socket. */
void aiogaol_zygote_init_enter(int report_fd)
{
    sigset_t all;
    err_fd = report_fd;
    mark(AIOGAOL_STEP_HAND_OVER);
    /* As run_init: the bounding and ambient sets emptied and the securebits locked (NO_SETUID_FIXUP
     * among them) once, for init and the program it forks. */
    limit_capabilities();
    if (switch_identity) {
        gid_t g = (gid_t)plan.inside_gid;
        uid_t u = (uid_t)plan.inside_uid;
        if (setgroups(0, NULL) < 0)
            fail(AIOGAOL_STEP_IDENTITY, errno, "init's setgroups");
        if (setresgid(g, g, g) < 0)
            fail(AIOGAOL_STEP_IDENTITY, errno, "init's setresgid");
        if (setresuid(u, u, u) < 0)
            fail(AIOGAOL_STEP_IDENTITY, errno, "init's setresuid");
    }
    /* The program (a fork, so it shares nothing with init once it exists) may never ptrace init. */
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0)
        fail(AIOGAOL_STEP_DROP_INIT, errno, "PR_SET_DUMPABLE");
    sigfillset(&all);
    if (sigprocmask(SIG_SETMASK, &all, NULL) < 0)
        fail(AIOGAOL_STEP_SIGNALFD, errno, "sigprocmask");
    zygote_sfd = signalfd(-1, &all, SFD_CLOEXEC);
    if (zygote_sfd < 0)
        fail(AIOGAOL_STEP_SIGNALFD, errno, "signalfd");
}

/* The rusage of one reaped process added to a record's figures (init's filter allows wait4, which
 * gives it, but not getrusage). */
static void add_usage(uint64_t *figures, const struct rusage *ru)
{
    figures[0] += (uint64_t)ru->ru_utime.tv_sec * 1000000000u + (uint64_t)ru->ru_utime.tv_usec * 1000u;
    figures[1] += (uint64_t)ru->ru_stime.tv_sec * 1000000000u + (uint64_t)ru->ru_stime.tv_usec * 1000u;
    if ((uint64_t)ru->ru_maxrss > figures[2])
        figures[2] = (uint64_t)ru->ru_maxrss;
}

/* K, once P exists: run_init's loop.  Init drops everything it held for the program (capabilities,
 * no_new_privs, its own filter), keeps only the signalfd and the lifeline, forwards each catchable
 * signal, answers SIGRTMAX with SIGKILL of the program, and when the program ends kills what is left of
 * the namespace, reaps it and sends the program's exact wait status on the lifeline. */
void __attribute__((noreturn)) aiogaol_zygote_init_run(int program)
{
    pid_t child = (pid_t)program;
    int status = 0, done = 0, k;
    struct pollfd pfd[2];
    uint64_t figures[3] = {0, 0, 0}; /* as in a USAGE record, summed over every process init reaps */

    drop_init(child);
    mark(AIOGAOL_STEP_DROP_INIT);
    close(0);
    close(1);
    close(2);
    for (k = 0; k < plan.n_keep; k++)
        close(plan.keep[k]);
    if (plan.seccomp_fd >= 0)
        close(plan.seccomp_fd);
    /* Init keeps the report socket (the program closed its copy before its code ran): the program's
     * status and the jail's usage go there as soon as the jail is empty, ahead of J's report of init's
     * own end, which is then only the fallback for an init killed from outside. */

    pfd[0].fd = zygote_sfd;
    pfd[0].events = POLLIN;
    pfd[1].fd = plan.lifeline_fd;
    pfd[1].events = POLLIN;
    for (;;) {
        if (poll(pfd, plan.lifeline_fd >= 0 ? 2 : 1, -1) < 0) {
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
            ssize_t n = read(zygote_sfd, &si, sizeof si);
            if (n != (ssize_t)sizeof si)
                continue;
            if (si.ssi_signo == SIGCHLD) {
                pid_t p;
                int st;
                struct rusage ru;
                while ((p = wait4(-1, &st, WNOHANG, &ru)) > 0) {
                    add_usage(figures, &ru);
                    if (p == child) {
                        status = st;
                        done = 1;
                    }
                }
            } else if (!done && (int)si.ssi_signo == SIGRTMAX) {
                kill(child, SIGKILL);
            } else if (!done) {
                kill(child, (int)si.ssi_signo);
            }
        }
        if (done)
            break;
    }
    kill_jail(child);
    for (;;) {
        struct rusage ru;
        errno = 0;
        if (wait4(-1, NULL, __WALL, &ru) <= 0) {
            if (errno != EINTR)
                break;
            continue;
        }
        add_usage(figures, &ru);
    }
    {
        struct aiogaol_record rec;
        memset(&rec, 0, sizeof rec);
        rec.kind = AIOGAOL_ZYGOTE_DONE;
        rec.value = status;
        memcpy(rec.detail, figures, sizeof figures);
        send(err_fd, &rec, sizeof rec, MSG_NOSIGNAL);
        rec.kind = AIOGAOL_RECORD_EXIT;
        memset(rec.detail, 0, sizeof rec.detail);
        if (plan.lifeline_fd >= 0)
            send(plan.lifeline_fd, &rec, sizeof rec, MSG_NOSIGNAL);
    }
    if (WIFEXITED(status))
        _exit(WEXITSTATUS(status));
    _exit(128 + WTERMSIG(status));
}

/* P, PID 2: run_program up to its exec, in the same order, except that the signal dispositions are the
 * warm interpreter's own (Python's: SIGINT raises KeyboardInterrupt, SIGPIPE is ignored), as a fresh
 * `python3 -c` would have them, and that P is made dumpable again (exec would do it): a non-dumpable
 * process cannot read its own /proc/self/fd.  Only 0, 1 and 2 survive.  Returns to Python with
 * every wall up; the STARTED record is the last thing written on the report socket. */
void aiogaol_zygote_program_enter(void)
{
    struct sock_fprog prog;
    int keep[MAX_KEEP + 1], n = 0, i;
    sigset_t none;

    mark(AIOGAOL_STEP_FORK_PROGRAM);
    if (plan.umask >= 0)
        umask((mode_t)(plan.umask & 0777));
    if (chdir(plan.cwd) < 0)
        fail(AIOGAOL_STEP_CHDIR, errno, plan.cwd);
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
    sigemptyset(&none);
    if (sigprocmask(SIG_SETMASK, &none, NULL) < 0)
        fail(AIOGAOL_STEP_SIGNALS, errno, "sigprocmask");
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        fail(AIOGAOL_STEP_NO_NEW_PRIVS, errno, "prctl");
    drop_capabilities();
    if (prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) < 0)
        fail(AIOGAOL_STEP_CAPABILITIES, errno, "PR_SET_DUMPABLE");
    apply_landlock();
    mark(AIOGAOL_STEP_LANDLOCK);
    if (prog.len > 0 &&
        syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog) != 0)
        fail(AIOGAOL_STEP_SECCOMP, errno, "seccomp");
    mark(AIOGAOL_STEP_SECCOMP);
    send_record(err_fd, AIOGAOL_ZYGOTE_STARTED, AIOGAOL_STEP_NONE, 0, (int)getpid(), "");
    close(err_fd);
    err_fd = -1;
}
