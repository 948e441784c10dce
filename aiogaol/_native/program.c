/*
 * The program launcher: PID 2, cloned by init (CLONE_VM | CLONE_VFORK), drops everything and execs.
 *
 * In this order: its session (program_session: umask, chdir, setsid, rlimits), then its walls
 * (program_walls: every fd closed but stdio and pass_fds, signals reset, no_new_privs, capabilities
 * (bounding, ambient, securebits, the identity switch, capset), Landlock, seccomp with TSYNC), exec
 * (execvpe's search by hand, so the error kept is the meaningful one).  A warm interpreter's job
 * (zygote.c) takes the same session and walls, and returns to Python instead of the exec.
 */
#include "core.h"
#include "agent.h"

/* ------------------------------------------------------------------------------------------------ */
/* The program (PID 2): drop everything, exec                                                        */

struct sock_filter seccomp_insns[BPF_MAXINSNS];

size_t read_seccomp(void)
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

void apply_landlock(void)
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

int bounds_dropped;

/* What bounds the capabilities of every later exec: the bounding and ambient sets emptied, and the
 * securebits that keep root in the namespace from regaining capabilities at exec, locked.  None of it
 * removes an effective capability, and all of it is inherited: init does it once before it clones the
 * program (run_init), so neither the program's drop nor init's own has the bounding-set loop left. */
void limit_capabilities(void)
{
    int cap;
    /* Capabilities are numbered from 0 up to the kernel's last with no gap, and a number past the last
     * is EINVAL: the loop ends there rather than at 63.  (Without CAP_SETPCAP, in the fallback, every
     * call is EPERM, checked first: 63 bounds the loop then.) */
    for (cap = 0; cap <= 63; cap++) {
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0) {
            if (errno == EINVAL)
                break;
            if (!(plan.no_namespaces && errno == EPERM))
                fail(AIOGAOL_STEP_CAPABILITIES, errno, "bounding set");
        }
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
    bounds_dropped = 1;
}

/* The jail's ids (--uid/--gid, root servers only; nothing otherwise), no supplementary group: for init
 * before it clones the program, and for the program (a no-op there once init has them). */
void take_identity(int init)
{
    gid_t g = (gid_t)plan.inside_gid;
    uid_t u = (uid_t)plan.inside_uid;
    if (!switch_identity)
        return;
    if (setgroups(0, NULL) < 0)
        fail(AIOGAOL_STEP_IDENTITY, errno, init ? "init's setgroups" : "setgroups");
    if (setresgid(g, g, g) < 0)
        fail(AIOGAOL_STEP_IDENTITY, errno, init ? "init's setresgid" : "setresgid");
    if (setresuid(u, u, u) < 0)
        fail(AIOGAOL_STEP_IDENTITY, errno, init ? "init's setresuid" : "setresuid");
}

/* The program's own drop: the bounds (unless init set them already), its identity, then capset(0). */
void drop_capabilities(void)
{
    struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];
    if (!bounds_dropped)
        limit_capabilities();
    /* The identity switch comes after the bounding set and securebits (it needs CAP_SETUID and
     * CAP_SETGID, and NO_SETUID_FIXUP keeps it from clearing them early), before capset clears all. */
    take_identity(0);
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
void exec_program(void)
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

/* The program's rlimits: in its session, before its walls (run_program); for a warm interpreter's job
 * once its fds have come, under its walls (zygote.c: lowering a limit needs no capability, and
 * setrlimit is in every filter's allow list), so that a job's fd limit never bounds the hand-over. */
void program_rlimits(void)
{
    int i;
    for (i = 0; i < plan.n_rlimits; i++) {
        struct rlimit rl;
        rl.rlim_cur = (rlim_t)plan.rlimits[i].soft;
        rl.rlim_max = (rlim_t)plan.rlimits[i].hard;
        if (setrlimit(plan.rlimits[i].resource, &rl) < 0)
            fail(AIOGAOL_STEP_RLIMIT, errno, "setrlimit");
    }
}

/* The program's session, before its walls: umask, working directory, then, unless ``warm``, a new
 * session (program_own_session) and the rlimits.  For run_program and for a warm interpreter's job
 * (zygote.c), which takes its own session and rlimits when its job comes (aiogaol_zygote_program_enter):
 * until then it runs only aiogaol's code, in the warm interpreter's session, which has no controlling
 * terminal either. */
void program_session(int warm)
{
    if (plan.umask >= 0)
        umask((mode_t)(plan.umask & 0777));
    if (chdir(plan.cwd) < 0)
        fail(AIOGAOL_STEP_CHDIR, errno, plan.cwd);
    if (!warm) {
        program_own_session();
        program_rlimits();
    }
}

/* A session of the program's own: no controlling terminal (TIOCSTI cannot push keys into the caller's
 * tty), and, since the kernel's autogroups weigh each session as one, a share of the CPU per jail rather
 * than per process (a job that forks sixteen busy processes takes one jail's share). */
void program_own_session(void)
{
    if (setsid() < 0)
        fail(AIOGAOL_STEP_SETSID, errno, "setsid");
}

/* The program's walls, in order: every fd closed but stdio, pass_fds, the error pipe and ``hold`` (a
 * warm job's socket its fds come on, or -1); signal
 * dispositions reset (not for a warm interpreter, whose own are Python's, as a fresh `python3 -c`
 * has them) and the mask emptied; no_new_privs; capabilities and identity; Landlock; seccomp last, with
 * TSYNC, so that no thread and no later step escapes it.  A warm interpreter's job is made dumpable
 * again after its identity switch (exec would do it): a non-dumpable process cannot read its own
 * /proc/self/fd. */
void program_walls(int warm, int hold)
{
    struct sock_fprog prog;
    int keep[MAX_KEEP + 2], n = 0, i, sig;
    sigset_t none;
    prog.len = (unsigned short)read_seccomp();
    prog.filter = seccomp_insns;
    for (i = 0; i < plan.n_keep; i++)
        keep[n++] = plan.keep[i];
    keep[n++] = err_fd;
    if (hold >= 0)
        keep[n++] = hold;
    if (close_all_except(keep, n) < 0)
        fail(AIOGAOL_STEP_CLOSE_FDS, errno, "close_range");
    for (sig = 1; !warm && sig < NSIG; sig++) {
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
    if (warm && prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) < 0)
        fail(AIOGAOL_STEP_CAPABILITIES, errno, "PR_SET_DUMPABLE");
    apply_landlock();
    mark(AIOGAOL_STEP_LANDLOCK);
    /* (The TIME records after it are plain writes to the error pipe, which the filter allows.) */
    if (prog.len > 0 &&
        syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog) != 0)
        fail(AIOGAOL_STEP_SECCOMP, errno, "seccomp");
    mark(AIOGAOL_STEP_SECCOMP);
}

void run_program(void)
{
    mark(AIOGAOL_STEP_FORK_PROGRAM);
    /* Without a PID namespace nothing takes the program down with init: a SIGKILL of init (proc.kill())
     * must still end it.  Init is single-threaded, so the parent-death signal is exact here. */
    if (plan.no_namespaces) {
        if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0)
            fail(AIOGAOL_STEP_SIGNALS, errno, "PR_SET_PDEATHSIG");
        if (getppid() != init_pid)
            _exit(137);
    }
    program_session(0);
    program_walls(0, -1);
    if (plan.agent_fd >= 0) /* a sandbox: its agent, as jailed as any program, instead of an exec */
        aiogaol_agent_main(plan.agent_fd, plan.cwd, err_fd, plan.agent_idle);
    mark(AIOGAOL_STEP_EXEC);
    exec_program();
    _exit(127);
}
