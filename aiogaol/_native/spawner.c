/*
 * The spawner: the helper executable kept running (aiogaol-jail --serve FD), one jail per request.
 *
 * Per request: parse it (wire.c), create init in the new namespaces as the server's child (start_jail:
 * clone, or clone3 into the jail's cgroup), report its PID, write its id maps, let it go.  Between
 * requests, the one shortcut: the next default jail's init made ahead of time (a "waiting init"), with
 * the kernel's part of the last request's plan built (mounts.c), handed the next request that fits
 * (hand_over), and told to let go of the host's tree when the host's mount table changes.
 */
#include "core.h"

/* ------------------------------------------------------------------------------------------------ */
/* Creating init                                                                                     */

/* cgroup v2 placement.  Init is created straight into the jail's cgroup (clone3 CLONE_INTO_CGROUP,
 * Linux 5.7, from the directory fd the request carries), so every process of the jail is in it from its
 * first instruction, the spawner never joins it (pids.max counts only the jail), and a CLONE_NEWCGROUP
 * namespace is rooted there.  Where clone3 is missing (ENOSYS, or a seccomp policy that answers so), init
 * is cloned without its cgroup namespace, the spawner moves it in (cgroup.procs) before it lets it go,
 * and init then makes its cgroup namespace, rooted in the jail's cgroup (init_child): init runs nothing
 * before it is placed, and the spawner itself never moves. */
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

static pid_t clone_into_cgroup(unsigned long flags, int cgroup)
{
    struct aiogaol_clone_args ca;
    pid_t pid;
    memset(&ca, 0, sizeof ca);
    ca.flags = (uint64_t)flags | CLONE_INTO_CGROUP;
    /* clone3 refuses an exit signal with CLONE_PARENT: init inherits the spawner's, which is SIGCHLD
     * (posix_spawn), as the legacy clone does. */
    ca.exit_signal = (flags & CLONE_PARENT) ? 0 : SIGCHLD;
    ca.cgroup = (uint64_t)cgroup;
    pid = (pid_t)syscall(SYS_clone3, &ca, sizeof ca);
    if (pid >= 0 || (errno != ENOSYS && errno != E2BIG)) {
        if (pid < 0)
            fail(AIOGAOL_STEP_CLONE_INIT, errno, "clone3 into the jail's cgroup");
        return pid;
    }
    join_cgroup_late = 1; /* seen by init too: it is cloned with this memory */
    return (pid_t)syscall(SYS_clone, (flags & ~(unsigned long)CLONE_NEWCGROUP) | SIGCHLD, NULL, NULL, NULL, NULL);
}

/* The fallback's placement: init (waiting for its id maps) written into the jail's cgroup.procs. */
static void move_into_cgroup(int cgroup, pid_t init)
{
    char buf[24], *end = fmt_ulong(buf, (unsigned long)init);
    int procs = openat(cgroup, "cgroup.procs", O_WRONLY | O_CLOEXEC);
    if (procs < 0)
        fail(AIOGAOL_STEP_CLONE_INIT, errno, "open cgroup.procs");
    *end++ = '\n';
    if (write(procs, buf, (size_t)(end - buf)) != end - buf)
        fail(AIOGAOL_STEP_CLONE_INIT, errno, "write cgroup.procs");
    close(procs);
}

/* The spawner's copy of the request's fd that init will have as number target; -1 if none. */
static int received_fd(int target)
{
    int i;
    for (i = 0; i < req_n; i++)
        if (req_to[i] == target)
            return req_from[i];
    return -1;
}

/* --uid/--gid name the host identity the program runs as, mapped to the same numbers inside.  By default
 * it is the caller's own (mapped to itself); a root caller passes nobody's, so the program never holds
 * root's files as their owner nor root's supplementary groups. */
void resolve_identity(uid_t uid, gid_t gid)
{
    if (plan.inside_uid < 0)
        plan.inside_uid = (long)uid;
    if (plan.inside_gid < 0)
        plan.inside_gid = (long)gid;
    switch_identity = plan.inside_uid != (long)uid || plan.inside_gid != (long)gid;
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

/* Create init (the server's child, in the new namespaces), report its PID, write its id maps, and let
 * it go.  The PID goes first: once init exists, the server must learn of it whatever fails next, since
 * only the server can reap it. */
static pid_t start_jail(void)
{
    uid_t uid = getuid();
    gid_t gid = getgid();
    int flags, cgroup = -1;
    pid_t init;

    resolve_identity(uid, gid);
    flags = JAIL_NAMESPACES; /* init unshares the network namespace itself (see init_child) */
    if (plan.no_namespaces)
        flags = 0; /* the fallback: init is only the server's child and the program's supervisor */
    if (plan.cgroup_fd >= 0 && (cgroup = received_fd(plan.cgroup_fd)) < 0)
        fail(AIOGAOL_STEP_ARGS, EBADF, "--cgroup-fd names none of the request's fds");
    if (pipe2(sync_fds, O_CLOEXEC) < 0)
        fail(AIOGAOL_STEP_CLONE_INIT, errno, "sync pipe");
    /* Init is created straight into the new namespaces, and as the server's child (CLONE_PARENT).
     * The spawner stays in the parent user namespace and writes init's id maps from there: that is
     * what lets a privileged caller map an identity other than its own (see --uid above). */
    join_cgroup_late = 0;
    if (cgroup >= 0)
        init = clone_into_cgroup(CLONE_PARENT | flags, cgroup);
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
    if (join_cgroup_late)
        move_into_cgroup(cgroup, init);
    if (!plan.no_namespaces)
        write_maps(init, uid, gid);
    if (write(sync_fds[1], "g", 1) != 1)
        fail(AIOGAOL_STEP_CLONE_INIT, errno, "sync pipe");
    close(sync_fds[1]);
    sync_fds[1] = -1;
    mark(AIOGAOL_STEP_UID_MAP);
    return init;
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
static int waiting_loopback;                     /* it brought its lo up (the last plan's --loopback) */
static int waiting_off;                         /* creating one failed (or "none"): the usual path only */
static int waiting_stale;                       /* the host's mounts changed since: serves no request */
static int ahead_eager;                         /* "eager": made at once, not once the last jail has ended */
static int mounts_fd = -1;
#define WAITING_IDLE_MS 2    /* quiet time before making one, when no jail is known to be starting */
#define WAITING_AFTER_MS 10  /* longest wait for the last jail's init to exit first */
static int last_init = -1;   /* pidfd of the init last started, until it exits */

static void forget_last_init(void)
{
    if (last_init >= 0)
        close(last_init);
    last_init = -1;
}

/* The mount namespaces of the jails the spawner started, held until each jail's init exits.  The last
 * process of a mount namespace tears its mounts down as it exits (about 0.1 ms for a jail's forty), and
 * the server waits for init's exit; with the namespace held here, init's exit is that much shorter and
 * the teardown runs in the spawner (at the jails' niceness) when it sees the init gone, beside the
 * server's next steps rather than before them.  Best effort: a namespace not held (no pidfd, the table
 * full, init already gone) is torn down by its init as before.  Nothing runs in a held namespace: its
 * processes are all dead, and every process the spawner clones closes these fds first (close_all_except). */
#define HELD_MAX 64
static int held_pidfd[HELD_MAX], held_ns[HELD_MAX], n_held;
#ifndef PIDFD_GET_MNT_NAMESPACE
#define PIDFD_GET_MNT_NAMESPACE _IO(0xFF, 3) /* linux/pidfd.h, 6.11 */
#endif

static void hold_mounts(pid_t pid)
{
    int pfd, ns;
    if (n_held == HELD_MAX)
        return;
    pfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (pfd < 0)
        return;
    ns = ioctl(pfd, PIDFD_GET_MNT_NAMESPACE, 0);
    if (ns < 0) {
        /* Before 6.11, by /proc; the PID is the process of the pidfd if it still lives after the open. */
        char path[64], *p;
        memcpy(path, "/proc/", 6);
        p = fmt_ulong(path + 6, (unsigned long)pid);
        memcpy(p, "/ns/mnt", 8);
        ns = open(path, O_RDONLY | O_CLOEXEC);
        if (ns >= 0 && syscall(SYS_pidfd_send_signal, pfd, 0, NULL, 0) < 0) {
            close(ns);
            ns = -1;
        }
    }
    if (ns < 0 || fcntl(ns, F_SETFD, FD_CLOEXEC) < 0 || fcntl(pfd, F_SETFD, FD_CLOEXEC) < 0) {
        if (ns >= 0)
            close(ns);
        close(pfd);
        return;
    }
    held_pidfd[n_held] = pfd;
    held_ns[n_held] = ns;
    n_held++;
}

/* poll(2) on p, with every held jail's pidfd beside it: the namespaces of the inits that exited are let
 * go on the way, and what is returned is poll's answer for p alone (0 once timeout_ms has passed).  Only
 * where the spawner waits with its next init made ahead already: let go before that init is made, a
 * namespace's teardown would delay it, and with it the next request. */
static int poll_held(struct pollfd *p, int n, int timeout_ms)
{
    struct pollfd all[4 + HELD_MAX];
    uint64_t end = now_ns() + (uint64_t)(timeout_ms < 0 ? 0 : timeout_ms) * 1000000u;
    int i, r, mine;
    for (;;) {
        for (i = 0; i < n; i++)
            all[i] = p[i];
        for (i = 0; i < n_held; i++) {
            all[n + i].fd = held_pidfd[i];
            all[n + i].events = POLLIN;
            all[n + i].revents = 0;
        }
        r = poll(all, (nfds_t)(n + n_held), timeout_ms);
        if (r < 0)
            return r;
        for (i = n_held - 1; i >= 0; i--) {
            if (all[n + i].revents) {
                close(held_ns[i]); /* the last reference: the jail's mounts go here */
                close(held_pidfd[i]);
                n_held--;
                held_pidfd[i] = held_pidfd[n_held];
                held_ns[i] = held_ns[n_held];
            }
        }
        for (i = 0, mine = 0; i < n; i++) {
            p[i].revents = all[i].revents;
            mine += all[i].revents != 0;
        }
        if (mine || r == 0)
            return mine;
        if (timeout_ms >= 0) {
            uint64_t t = now_ns();
            if (t >= end)
                return 0;
            timeout_ms = (int)((end - t) / 1000000u);
        }
    }
}

static void watch_init(pid_t pid)
{
    if (!plan.no_namespaces) /* the fallback's init is in the host's mount namespace: nothing to hold */
        hold_mounts(pid);
    forget_last_init();
    last_init = (int)syscall(SYS_pidfd_open, pid, 0); /* -1 where pidfds are missing: the idle delay */
    if (last_init >= 0)
        fcntl(last_init, F_SETFD, FD_CLOEXEC);
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
    waiting_stale = 0;
}

/* The host's mounts changed while a waiting init holds its copy of them.  Dropped now, it would exit
 * and stay a zombie until the server next spawns (only the server reaps it, and an idle server does not
 * look), one per change; so it is told to let go of the host's tree at once (one byte on its socket:
 * it detaches /oldroot), and is dropped at the next request.  No other is made while it waits. */
static void release_waiting(void)
{
    if (waiting_stale)
        return;
    waiting_stale = 1;
    (void)send(waiting_chan, "d", 1, MSG_DONTWAIT | MSG_NOSIGNAL);
}

/* The waiting init: no fd but its socket until a request comes, then what init_child does. */
static void __attribute__((noreturn)) waiting_child(int chan, int server, uid_t uid, gid_t gid,
                                                    unsigned long long root_size, int loopback)
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
    /* What every default jail has, and the kernel's part of the last request's plan (mounts.c:
     * /proc, /dev, the masks, /dev/shm, devpts; nothing the host's files name), done while nobody waits.
     * A failure here ends this init unseen (no request, no error pipe): the hand-over then fails and the
     * request takes the usual path, where the same step fails again and is reported. */
    build_kernel_part(root_size);
    /* Its loopback too, when the last jail had one: lo is the network namespace's own and names nothing
     * of the host, and bringing it up is a tenth of a millisecond off the request's path. */
    if (loopback) {
        loopback_up();
        loopback_done = 1;
    }
    for (;;) {
        /* A one-byte message is the spawner's "the host's mounts changed": let go of this copy of the
         * host's tree (an unmounted filesystem must not stay busy in it) and wait to be dropped at the
         * next request, rather than exit now and be a zombie of an idle server (see release_waiting). */
        char c;
        ssize_t n = recv(chan, &c, 1, MSG_PEEK | MSG_TRUNC);
        if (n < 0 && errno == EINTR)
            continue;
        if (n != 1)
            break; /* a request (or EOF, or an error, which recv_request meets too) */
        (void)recv(chan, &c, 1, 0);
        (void)umount2("/oldroot", MNT_DETACH);
    }
    if (!recv_request(chan, &buf, &cap, &len, &truncated))
        _exit(0); /* dropped, or the spawner is gone: never used */
    got = now_ns();
    close(chan);
    err_fd = req_n > 0 ? req_from[0] : -1;
    if (truncated)
        fail(AIOGAOL_STEP_ARGS, E2BIG, "request");
    parse_request(buf, len);
    /* The spawner checked both; checked again where it matters. */
    if (!plan_fits_kernel_part() || plan.loopback != loopback)
        fail(AIOGAOL_STEP_HAND_OVER, EINVAL, "a plan that does not start as the init made ahead of time");
    resolve_identity(uid, gid); /* the spawner checked that the request wants the ids mapped here */
    place_fds();
    init_fds(-1);
    apply_nice();
    mark_at(AIOGAOL_STEP_MAKE_PRIVATE, got);
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
    pid = (pid_t)syscall(SYS_clone, CLONE_PARENT | JAIL_NAMESPACES | CLONE_NEWNET | SIGCHLD, NULL, NULL, NULL,
                         NULL);
    if (pid == 0) {
        close(chan[0]);
        waiting_child(chan[1], sock, uid, gid, waiting_root_size, waiting_loopback);
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
    pid_t pid = waiting_pid;
    int chan = waiting_chan;
    ssize_t n;
    waiting_pid = 0;
    waiting_chan = -1;
    waiting_stale = 0;
    n = send_fds(chan, buf, len, req_from, req_n);
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
    /* A jail of its own cgroup is cloned into it (start_jail), so no init made ahead of time serves
     * it; nor one whose request came in a memfd, too large to hand over in one message. */
    if (plan.unshare_net && !plan.no_namespaces && plan.cgroup_fd < 0 && !req_large) {
        long want_uid = plan.inside_uid < 0 ? (long)getuid() : plan.inside_uid;
        long want_gid = plan.inside_gid < 0 ? (long)getgid() : plan.inside_gid;
        if (!plan_starts_standard()) {
            watch_init(start_jail()); /* a plan no prebuilt jail fits (not one of aiogaol's own) */
            return;
        }
        int fits = plan_fits_kernel_part();
        keep_kernel_part(); /* for the next one */
        if (waiting_pid && (waiting_stale || !fits || mounts_changed() || want_uid != waiting_uid ||
                            want_gid != waiting_gid || plan.root_size != waiting_root_size ||
                            plan.loopback != waiting_loopback))
            drop_waiting(sock);
        /* The next waiting init is made for the ids, root size and loopback the last jail used. */
        waiting_uid = want_uid;
        waiting_gid = want_gid;
        waiting_root_size = plan.root_size;
        waiting_loopback = plan.loopback;
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
            r = poll(p, (nfds_t)n, ahead_eager ? 0 : n == 2 ? WAITING_AFTER_MS : WAITING_IDLE_MS);
            if (r == 0 || (r > 0 && !(p[0].revents & (POLLIN | POLLHUP)))) {
                forget_last_init();
                make_waiting(sock);
            }
        }
        if (waiting_pid) {
            /* While a waiting init holds its copy of the host's mount tree, a change on the host makes
             * it let go of that copy at once (release_waiting): an unmounted filesystem must not stay
             * busy in an idle copy.  This poll takes the change, so the stale mark is what the next
             * request's check sees. */
            struct pollfd p[2];
            p[0].fd = sock;
            p[0].events = POLLIN;
            p[0].revents = 0;
            p[1].fd = mounts_fd;
            p[1].events = POLLPRI;
            p[1].revents = 0;
            if (poll_held(p, waiting_stale ? 1 : 2, -1) > 0 && !waiting_stale &&
                (p[1].revents & (POLLPRI | POLLERR))) {
                release_waiting();
                continue;
            }
        } else if (n_held > 0) {
            struct pollfd p;
            p.fd = sock;
            p.events = POLLIN;
            p.revents = 0;
            (void)poll_held(&p, 1, -1); /* the held namespaces are let go while no request comes */
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

/* The helper executable's only mode: the spawner, "aiogaol-jail --serve FD [NICE]" (started by
 * _spawner.py).  Every jail, a cgroup's or an oversized request's too, is one request to it. */
int aiogaol_helper_main(int argc, char **argv, char **envp)
{
    static const char usage[] = "usage: aiogaol-jail --serve FD [NICE [waiting|none|eager]] (started by aiogaol)\n";
    (void)envp;
    if (argc >= 3 && argc <= 5 && strcmp(argv[1], "--serve") == 0) {
        /* The spawner's niceness, the niceness of every jail it serves (see _spawner.py): raised once,
         * here, so that its clones and id maps, like the jails' set-up, yield the CPU to the server. */
        if (argc >= 4 && raise_nice((int)parse_num(argv[3], 10)) < 0)
            return 1;
        /* Its shortcut (_spawner.AHEAD_MODES): "waiting", the default; "none"; "eager". */
        if (argc == 5 && strcmp(argv[4], "waiting") != 0) {
            if (strcmp(argv[4], "eager") == 0)
                ahead_eager = 1;
            else if (strcmp(argv[4], "none") == 0)
                waiting_off = 1;
            else
                return 2;
        }
        return aiogaol_serve((int)parse_num(argv[2], 10));
    }
    if (write(2, usage, sizeof usage - 1) < 0)
        return 2;
    return 2;
}
