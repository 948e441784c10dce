/*
 * The warm interpreter's way into a jail (aiogaol.PythonPool).
 *
 * A spawned jail is built by clones of the spawner that end in exec.  A PythonPool job must instead go
 * on running the warm Python image it was forked from, so the same steps are taken in-process, by
 * clones of the warm interpreter (the "zygote", aiogaol/_zygote.py).  The zygote clones K straight into
 * the jail's namespaces (aiogaol_zygote_clone, a plain clone that returns to Python in K, which is sound
 * because the zygote is single-threaded and holds no interpreter lock in the call: K's interpreter is
 * the zygote's, as consistent as after os.fork).  K runs C from the clone on and builds its jail in the
 * same call, so that the only Python it runs is its os.fork of P, whose after-fork hooks then run (the
 * random module is reseeded, the thread states are reset): P goes on running Python.  Two copies of the
 * warm image per job, not three: each copy costs its page tables, the pages it writes and its exit.
 *
 *   zygote (host namespaces; runs only aiogaol's code), for each jail, ahead of the job that will use it
 *   (everything down to P's walls; from "K: waits" on, once a job came):
 *     clone ─▶ K: PID 1.  aiogaol_zygote_clone: its fds, the program's filter on a pipe, the plan (the
 *                 helper argv, parsed and checked); the zygote writes K's id maps from the parent user
 *                 namespace (as the spawner writes init's) and tells K its host PID; niceness, network
 *                 namespace; aiogaol_zygote_init_build builds the jail (mounts.c's build_jail: the same
 *                 mounts, pivot_root); aiogaol_zygote_init_enter takes the program's identity, turns
 *                 non-dumpable, blocks every signal behind a signalfd
 *              os.fork ─▶ P: PID 2.  aiogaol_zygote_program_ready: what run_program does before exec (fds,
 *                           no_new_privs, capabilities, identity, Landlock, seccomp with TSYNC) but the
 *                           rlimits; then BUILT; in a jail made ahead, the warm-up (Python: the pages
 *                           a job's first steps write, copied now); aiogaol_zygote_program_receive:
 *                           P waits for its job's fds from K
 *              K: aiogaol_zygote_init_wait: waits for a job's fds from the zygote, sends the server a
 *                 pidfd of itself (init_job); aiogaol_zygote_init_run: drops everything it held
 *                 (drop_init), only then hands P its fds, and runs init's loop (forwards signals, reaps,
 *                 kills the namespace when the program ends); then the program's status and the jail's
 *                 usage (DONE) on the job's report socket
 *              P: aiogaol_zygote_program_enter: a session of its own, the rlimits, a STARTED record, and
 *                 back to Python, which runs the job's code
 *     the zygote reaps K and reports its end on the job's report socket (USAGE: what counts if K was
 *     killed before DONE)
 *
 * This file only calls the steps of the other roles (core.h): parse_args, resolve_identity, build_jail,
 * loopback_up, apply_nice, limit_capabilities, take_identity, drop_init, supervise, reap_jail,
 * program_session, program_walls, program_rlimits, close_all_except, send_record, send_fds, fail.  So a
 * jail entered here is built, watched and walled by exactly the code that does it for every other jail.
 *
 * Every failure goes through wire.c's fail(): a record (step, errno, detail) on the job's report
 * socket (--err), then _exit.  Nothing here allocates or returns to Python in a half-built state.
 */
#include "core.h"

#include <sys/signalfd.h>

/* Records of the warm path only, on the job's report socket (beside wire.c's FAILURE records). */
#define AIOGAOL_ZYGOTE_STARTED 16 /* P is in its jail, every wall up: the job's code runs next */
#define AIOGAOL_ZYGOTE_USAGE 17   /* from the zygote: value is K's wait status; detail holds three uint64: user ns,
                                     system ns and max RSS in KiB of the whole jail */
#define AIOGAOL_ZYGOTE_DONE 18    /* from K, once the jail is empty: value is the program's wait status,
                                     detail as USAGE's, for every process of the jail K reaped */
#define AIOGAOL_ZYGOTE_BUILT 19   /* from P, on the zygote's pipe: the jail made ahead, its program walled in,
                                     is ready for a job */

static int zygote_sfd = -1;
#define ZYGOTE_HIGH_FD 16 /* above every fd number _zygote.py places a job's fds or its own at */

/* The zygote itself, once its preloads are in: nothing of the server's nor of a job may ptrace it or
 * read its memory. */
int aiogaol_zygote_seal(void)
{
    return prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0 ? -errno : 0;
}

/* K, just cloned: the plan from the helper's arguments (as the spawner gets them from _jail), for the
 * zygote's ids (uid, gid: taken before the clone, since ours read as the overflow ids until the zygote
 * has written our maps). */
static void zygote_plan(int argc, char **argv, int report_fd, uid_t uid, gid_t gid)
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
    resolve_identity(uid, gid);
    /* Dumpable again (the zygote is not), or the zygote, which writes our id maps, could not open our
     * /proc files: a non-dumpable process's are root's.  K holds nothing but its own job. */
    if (prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) < 0)
        fail(AIOGAOL_STEP_UNSHARE, errno, "PR_SET_DUMPABLE");
    mark(AIOGAOL_STEP_ARGS);
}

/* K, once the zygote has written its id maps. */
static void zygote_after_maps(void)
{
    mark(AIOGAOL_STEP_UID_MAP);
    apply_nice();
    if (plan.unshare_net && unshare(CLONE_NEWNET) < 0)
        fail(AIOGAOL_STEP_UNSHARE, errno, "network namespace");
    mark(AIOGAOL_STEP_MAKE_PRIVATE);
}

/* K's fds before a job comes: the id-map handshake with the zygote, the socket the job's fds come
 * on and the pipe they report on.  Then the numbers _zygote.py names too (the helper argv the server
 * builds names the report socket and the filter's pipe): where K puts the program's filter
 * (SECCOMP_FD), how many fds a job sends, and where K places them (REPORT_FD, PAYLOAD_FD). */
#define ZJ_SYNC_R 7
#define ZJ_SYNC_W 8
#define ZJ_SOCK 9
#define ZJ_ERR 10
#define ZJ_SECCOMP_FD 6
#define ZJ_REPORT_FD 3
#define ZJ_PAYLOAD_FD 5
#define ZJ_JOB_FDS 6
#define ZJ_NOBODY_EXIT 127

/* A socket pair above every number a job's fd takes (0-6) and the handshake's (7-10), so that placing
 * those never clobbers it; a failure fails the step. */
static void high_pair(int step, int ends[2])
{
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) < 0)
        fail(step, errno, "socketpair");
    ends[0] = fcntl(pair[0], F_DUPFD_CLOEXEC, ZJ_ERR + 1);
    ends[1] = fcntl(pair[1], F_DUPFD_CLOEXEC, ZJ_ERR + 1);
    if (ends[0] < 0 || ends[1] < 0)
        fail(step, errno, "F_DUPFD_CLOEXEC");
    close(pair[0]);
    close(pair[1]);
}

/* fds at first, first + 1, ... (each moved above every target first, so that no dup2 clobbers one still
 * to be placed); the originals closed.  -1 if an fd could not be moved. */
static int place_at(const int *fds, int n, int first)
{
    int high[ZJ_JOB_FDS], i;
    for (i = 0; i < n; i++)
        if ((high[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 64)) < 0)
            return -1;
    for (i = 0; i < n; i++)
        close(fds[i]);
    for (i = 0; i < n; i++) {
        if (dup2(high[i], first + i) < 0)
            return -1;
        close(high[i]);
    }
    return 0;
}

/* Exactly n fds (and one byte) from a socket, placed at first...; 0 at EOF or on anything else (the jail
 * was dropped before a job came, or the zygote is gone), with whatever came closed. */
static int receive_fds_at(int sock, int n, int first)
{
    char byte, cbuf[CMSG_SPACE(sizeof(int) * ZJ_JOB_FDS)] __attribute__((aligned(8)));
    int fds[ZJ_JOB_FDS], got = 0, i;
    struct msghdr msg;
    struct iovec iov;
    struct cmsghdr *c;
    ssize_t r;
    memset(&msg, 0, sizeof msg);
    iov.iov_base = &byte;
    iov.iov_len = 1;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf;
    msg.msg_controllen = sizeof cbuf;
    while ((r = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC)) < 0 && errno == EINTR)
        ;
    for (c = r > 0 ? CMSG_FIRSTHDR(&msg) : NULL; c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        for (i = 0; i < (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int)); i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
            if (got < ZJ_JOB_FDS)
                fds[got++] = fd;
            else
                close(fd);
        }
    }
    if (r <= 0 || got != n || (msg.msg_flags & MSG_CTRUNC)) {
        for (i = 0; i < got; i++)
            close(fds[i]);
        return 0;
    }
    return place_at(fds, n, first) == 0;
}

/* The zygote's clone of K, straight into the jail's user, PID, mount, IPC, UTS and cgroup namespaces
 * (K is PID 1 of its own), as the spawner clones init: returns K's PID in the zygote (or -errno), and
 * returns in K only, with the jail built and K entered.  From the clone on, K runs C: the handshake fds
 * to 7-10, everything else but 0-2 closed, the program's filter on a pipe at 6; the plan; "u" to the
 * zygote, which writes our id maps and answers "g" and our host PID (which K cannot see from inside its
 * PID namespace); the network namespace; the jail (aiogaol_zygote_init_build, _enter).  k_out then holds
 * the two ends of the socket K hands P its fds on (to_program, then P's) and K's host PID; back in
 * Python, K's only work is the os.fork of P (whose after-fork hooks must run: P goes on running Python).
 * The zygote is K's parent, and reaps it: its end is the job's USAGE if K dies before DONE. */
int aiogaol_zygote_clone(int argc, char **argv, const char *filter, int filter_len, int sock, int err,
                         int sync_r, int sync_w, int *k_out)
{
    int handshake[4], to_p[2];
    uid_t uid = getuid();
    gid_t gid = getgid();
    int32_t host = 0;
    char go;
    pid_t pid = (pid_t)syscall(SYS_clone, JAIL_NAMESPACES | SIGCHLD, NULL, NULL, NULL, NULL);
    if (pid != 0)
        return pid < 0 ? -errno : (int)pid;
    handshake[0] = sync_r;
    handshake[1] = sync_w;
    handshake[2] = sock;
    handshake[3] = err;
    if (place_at(handshake, 4, ZJ_SYNC_R) < 0)
        _exit(ZJ_NOBODY_EXIT);
    if (syscall(SYS_close_range, 3, ZJ_SYNC_R - 1, 0) < 0 || syscall(SYS_close_range, ZJ_ERR + 1, ~0U, 0) < 0)
        _exit(ZJ_NOBODY_EXIT);
    if (filter_len > 0) {
        /* At most 32 KiB (BPF_MAXINSNS), below a pipe's capacity: the write never blocks. */
        int fp[2], off = 0;
        if (pipe(fp) < 0)
            _exit(ZJ_NOBODY_EXIT);
        while (off < filter_len) {
            ssize_t w = write(fp[1], filter + off, (size_t)(filter_len - off));
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                _exit(ZJ_NOBODY_EXIT);
            off += (int)w;
        }
        close(fp[1]);
        if (fp[0] != ZJ_SECCOMP_FD) {
            if (dup2(fp[0], ZJ_SECCOMP_FD) < 0)
                _exit(ZJ_NOBODY_EXIT);
            close(fp[0]);
        }
    }
    zygote_plan(argc, argv, ZJ_ERR, uid, gid);
    mark(AIOGAOL_STEP_UNSHARE);
    if (write(ZJ_SYNC_W, "u", 1) != 1 || read(ZJ_SYNC_R, &go, 1) != 1 || go != 'g' ||
        read(ZJ_SYNC_R, &host, sizeof host) != (ssize_t)sizeof host)
        _exit(ZJ_NOBODY_EXIT); /* the zygote refused (it reported why) or died */
    close(ZJ_SYNC_R);
    close(ZJ_SYNC_W);
    zygote_after_maps();
    aiogaol_zygote_init_build();
    aiogaol_zygote_init_enter();
    high_pair(AIOGAOL_STEP_FORK_PROGRAM, to_p);
    k_out[0] = to_p[0];
    k_out[1] = to_p[1];
    k_out[2] = host;
    return 0;
}

/* K, once P exists (walled in, waiting on to_program): the job's fds from the zygote at 0-5 (without
 * them, the jail was dropped: exit), the report socket taking over from the pipe, then a PID record
 * with a pidfd of ourselves for the server (the zygote alone reaps us, and only once we have exited:
 * the server's pidfd names us or nothing), then init's loop (aiogaol_zygote_init_run). */
void __attribute__((noreturn)) aiogaol_zygote_init_wait(int program, int to_program, int host)
{
    struct aiogaol_record rec;
    int pidfd;
    if (!receive_fds_at(ZJ_SOCK, ZJ_JOB_FDS, 0))
        _exit(0); /* dropped before a job came: nothing runs in the jail yet */
    close(ZJ_SOCK);
    aiogaol_zygote_init_job(ZJ_REPORT_FD);
    close(ZJ_ERR);
    pidfd = (int)syscall(SYS_pidfd_open, getpid(), 0);
    if (pidfd < 0)
        fail(AIOGAOL_STEP_HAND_OVER, errno, "pidfd_open of init");
    memset(&rec, 0, sizeof rec);
    rec.kind = AIOGAOL_RECORD_PID;
    rec.value = host;
    if (send_fds(ZJ_REPORT_FD, &rec, sizeof rec, &pidfd, 1) < 0)
        fail(AIOGAOL_STEP_HAND_OVER, errno, "send init's pidfd");
    close(pidfd);
    aiogaol_zygote_init_run(program, to_program, ZJ_PAYLOAD_FD);
}

/* K, PID 1 of the new PID namespace, before any job is known: the jail, as run_init builds it. */
void aiogaol_zygote_init_build(void)
{
    if (plan.loopback && plan.unshare_net)
        loopback_up();
    build_jail();
    mark(AIOGAOL_STEP_HOSTNAME);
}

/* K, once the jail is built, still before any job is known: the rest of what run_init does before it
 * clones the program.  Failures go on the pipe the zygote reads until a job takes the jail. */
void aiogaol_zygote_init_enter(void)
{
    sigset_t all;
    /* As run_init: the bounding and ambient sets emptied and the securebits locked (NO_SETUID_FIXUP
     * among them) once, for init and the program it forks. */
    limit_capabilities();
    take_identity(1);
    /* The program (a fork, so it shares nothing with init once it exists) may never ptrace init. */
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0)
        fail(AIOGAOL_STEP_DROP_INIT, errno, "PR_SET_DUMPABLE");
    sigfillset(&all);
    if (sigprocmask(SIG_SETMASK, &all, NULL) < 0)
        fail(AIOGAOL_STEP_SIGNALFD, errno, "sigprocmask");
    zygote_sfd = signalfd(-1, &all, SFD_CLOEXEC);
    if (zygote_sfd < 0)
        fail(AIOGAOL_STEP_SIGNALFD, errno, "signalfd");
    /* Above the numbers the job's fds are placed at when they come (0-6): dup2 must never close it. */
    if (zygote_sfd < ZYGOTE_HIGH_FD) {
        int high = fcntl(zygote_sfd, F_DUPFD_CLOEXEC, ZYGOTE_HIGH_FD);
        if (high < 0)
            fail(AIOGAOL_STEP_SIGNALFD, errno, "F_DUPFD_CLOEXEC");
        close(zygote_sfd);
        zygote_sfd = high;
    }
}

/* K, once a job's fds are in place (its report socket is err_fd from here on). */
void aiogaol_zygote_init_job(int report_fd)
{
    err_fd = report_fd;
    mark(AIOGAOL_STEP_HAND_OVER);
}

/* K, once the job's fds are in place and P (made before the job) waits for its own on to_program:
 * run_init's loop.  Init drops everything it held for the program (capabilities, no_new_privs, its own
 * filter) and only then hands P its fds (stdio, the report socket, the payload at ``payload``), so
 * that no code of the job runs while init holds anything; keeps only the signalfd and the lifeline,
 * forwards each catchable signal, answers SIGRTMAX with SIGKILL of the program, and when the program
 * ends kills what is left of the namespace, reaps it and sends the program's exact wait status on the
 * lifeline. */
void __attribute__((noreturn)) aiogaol_zygote_init_run(int program, int to_program, int payload)
{
    pid_t child = (pid_t)program;
    int status, k, give[5];
    uint64_t figures[3] = {0, 0, 0}; /* as in a USAGE record, summed over every process init reaps */

    drop_init(child);
    mark(AIOGAOL_STEP_DROP_INIT);
    give[0] = 0;
    give[1] = 1;
    give[2] = 2;
    give[3] = err_fd;
    give[4] = payload;
    /* sendmsg is in init's own filter (recvmsg is not: init receives nothing once it has dropped). */
    if (send_fds(to_program, "j", 1, give, 5) != 1)
        fail(AIOGAOL_STEP_HAND_OVER, errno, "hand the program its fds");
    close(to_program);
    close(payload);
    close(0);
    close(1);
    close(2);
    for (k = 0; k < plan.n_keep; k++)
        close(plan.keep[k]);
    /* Init keeps the report socket (the program has its own copy): the program's status and the jail's
     * usage go there as soon as the jail is empty, ahead of the zygote's report of init's own end, which
     * is then only the fallback for an init killed from outside. */

    status = supervise(child, zygote_sfd, figures);
    mark(AIOGAOL_STEP_REAP_PROGRAM);
    reap_jail(child, figures);
    mark(AIOGAOL_STEP_REPORT_EXIT);
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

/* P, PID 2, forked by K before any job is known: run_program up to its exec, in the same order, except
 * that the signal dispositions are the warm interpreter's own (Python's: SIGINT raises
 * KeyboardInterrupt, SIGPIPE is ignored), as a fresh `python3 -c` would have them, that P is made
 * dumpable again (exec would do it: a non-dumpable process cannot read its own /proc/self/fd), and
 * that the rlimits wait for the job (aiogaol_zygote_program_enter).  Only 0, 1, 2, the zygote's pipe
 * and ``hold`` (the socket its job's fds come on, from init) survive.  Returns to Python with every
 * wall up. */
void aiogaol_zygote_program_walls(int hold)
{
    mark(AIOGAOL_STEP_FORK_PROGRAM);
    program_session(1);
    program_walls(1, hold);
}

/* P, from its fork on until it is ready for a job: its walls (aiogaol_zygote_program_walls, which leaves
 * only 0-2, the zygote's pipe and hold open), then BUILT on the pipe (the jail is ready for a job), which
 * P then closes.  In C, so that P's Python before the job is only the job's own and the warm-up's
 * (_zygote.py's _warm_program, in a jail made ahead). */
void aiogaol_zygote_program_ready(int hold)
{
    aiogaol_zygote_program_walls(hold);
    send_record(ZJ_ERR, AIOGAOL_ZYGOTE_BUILT, AIOGAOL_STEP_NONE, 0, 0, "");
    close(ZJ_ERR);
    err_fd = -1;
}

/* P, ready: the job's five fds from K on hold, placed at 0-4 (stdio, the report socket, the payload).
 * Returns 1 with the fds in place; 0 if the jail was dropped before a job came (nothing of a job ever
 * ran here). */
int aiogaol_zygote_program_receive(int hold)
{
    if (!receive_fds_at(hold, 5, 0))
        return 0;
    close(hold);
    return 1;
}

/* P, once its job's fds are in place (the report socket at report_fd): a session of its own and the
 * rlimits, then the STARTED record, the last thing written on the report socket; the job's code runs
 * next.  Its session only now: its walls and warm-up, aiogaol's own work, ran in the warm interpreter's
 * session, which the pool weighs at the jobs' niceness (_zygote.py's _weigh_session), while the job's
 * own code gets a session, and so a fair share beside other jobs, of its own. */
void aiogaol_zygote_program_enter(int report_fd)
{
    err_fd = report_fd;
    program_own_session();
    program_rlimits();
    send_record(err_fd, AIOGAOL_ZYGOTE_STARTED, AIOGAOL_STEP_NONE, 0, (int)getpid(), "");
    close(err_fd);
    err_fd = -1;
}
