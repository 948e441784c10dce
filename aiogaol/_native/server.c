/*
 * The server's side of the C core, called through the cffi module: start the helper with posix_spawn
 * (vfork-class, so the cost does not grow with the server's memory), and the probes of aiogaol.check().
 */
#include "core.h"

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
