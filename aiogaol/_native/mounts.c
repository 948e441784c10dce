/*
 * The jail builder: init (PID 1 of the new namespaces) carries out the plan's mount steps.
 *
 * Steps 1 to 5 of docs/spawn.md's "The jail": private mounts, the staging tmpfs and the first
 * pivot_root (build_prefix), the plan's ops one by one (run_op: /proc, /dev, masks, binds by handle,
 * tmpfs, symlinks), then the pivot into the jail, its read-only root and the hostname (build_mounts,
 * build_jail).  Every path is walked without following a symlink (open_nofollow).
 */
#include "core.h"

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

/* Paths by handle.  Every path the jail is built from or onto is walked without following a symlink in
 * any component (openat2 RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS): a directory another jail may
 * write (a read-write bind) can hold a symlink by the time this jail is built, and following it would
 * bind, create or mount somewhere the profile never named (docs/security.md, "Binds by handle"). */
int open_nofollow(int dirfd, const char *path, int flags, uint64_t resolve)
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
void fail_open(int step, int changed_step, int err, const char *path)
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
int prebuilt; /* this much of the plan's ops is done already (0; or its kernel part, made ahead) */

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

/* The kernel's part of a plan: its leading ops that name none of the host's files (/proc, /dev, the
 * masks over /proc, /dev/shm, devpts), the same for every jail of a profile and for most profiles.  An
 * init made ahead of time builds the part of the last request that took that path (kept here, in the
 * spawner, and in the waiting init's copy of its memory); a request whose plan starts with the same ops
 * is handed to it.  Nothing the host's files name is made ahead of a request: its binds, symlinks and
 * directories come after this part and are made when it comes (see docs/spawn.md). */
#define MAX_KERNEL_OPS 64
static struct op kernel_ops[MAX_KERNEL_OPS] = {{OP_PROC, NULL, "/proc", 0, 0, 0, 0},
                                                {OP_DEV, NULL, "/dev", 0, 0, 0, 0}};
static int n_kernel_ops = 2;
static char kernel_names[8192]; /* the kept ops' destinations */

static int kernel_kind(enum op_kind kind)
{
    return kind == OP_PROC || kind == OP_DEV || kind == OP_MASK || kind == OP_RO_SELF || kind == OP_SHM ||
           kind == OP_DEVPTS;
}

static int same_op(const struct op *x, const struct op *y)
{
    return x->kind == y->kind && x->size == y->size && x->mode == y->mode && strcmp(x->b, y->b) == 0;
}

/* Whether a plan starts as every namespaced plan aiogaol makes does, with /proc and /dev. */
int plan_starts_standard(void)
{
    return plan.n_ops >= 2 && plan.ops[0].kind == OP_PROC && strcmp(plan.ops[0].b, "/proc") == 0 &&
           plan.ops[1].kind == OP_DEV && strcmp(plan.ops[1].b, "/dev") == 0;
}

/* Whether the plan starts with the kernel part kept (and so with /proc and /dev, as every namespaced
 * plan aiogaol makes does). */
int plan_fits_kernel_part(void)
{
    int i;
    if (plan.n_ops < n_kernel_ops)
        return 0;
    for (i = 0; i < n_kernel_ops; i++)
        if (!same_op(&plan.ops[i], &kernel_ops[i]))
            return 0;
    return 1;
}

/* Keep the plan's kernel part for the next init made ahead of time; kept as it was if the plan does
 * not start with /proc and /dev. */
void keep_kernel_part(void)
{
    size_t used = 0;
    int n = 0, i;
    if (!plan_starts_standard())
        return;
    /* The plan's strings point into the request, never here, so the part is written over in place; one
     * that does not fit is kept as far as it fits (a shorter prefix, which every such plan still fits). */
    for (i = 0; i < plan.n_ops && n < MAX_KERNEL_OPS && kernel_kind(plan.ops[i].kind); i++) {
        size_t len = str_len(plan.ops[i].b) + 1;
        if (used + len > sizeof kernel_names)
            break;
        memcpy(kernel_names + used, plan.ops[i].b, len);
        kernel_ops[n] = plan.ops[i];
        kernel_ops[n].a = NULL;
        kernel_ops[n].b = kernel_names + used;
        used += len;
        n++;
    }
    n_kernel_ops = n;
}

/* An init made ahead of time: the prefix (private mounts, staging, root tmpfs, pivot) and the kernel
 * part kept. */
void build_kernel_part(unsigned long long root_size)
{
    int i;
    build_prefix(root_size);
    for (i = 0; i < n_kernel_ops; i++)
        run_op(&kernel_ops[i]);
    prebuilt = n_kernel_ops;
}

/* The plan's mounts (those not prebuilt), then the pivot into the jail. */
void build_mounts(void)
{
    int i;

    if (!prebuilt)
        build_prefix(plan.root_size);
    for (i = prebuilt; i < plan.n_ops; i++)
        run_op(&plan.ops[i]);

    /* Nothing of the host's root stays reachable: pivot into the jail, which stacks the staging tmpfs
     * on the jail's root, then detach it, and with it everything under it, the host's tree at /oldroot
     * too (one detach, not two: each is a grace period the kernel waits out). */
    if (chdir("/newroot") < 0)
        fail(AIOGAOL_STEP_PIVOT_ROOT, errno, "/newroot");
    if (syscall(SYS_pivot_root, ".", ".") < 0)
        fail(AIOGAOL_STEP_PIVOT_ROOT, errno, "/newroot");
    if (umount2(".", MNT_DETACH) < 0)
        fail(AIOGAOL_STEP_DETACH_OLDROOT, errno, "staging and /oldroot");
    if (chdir("/") < 0)
        fail(AIOGAOL_STEP_PIVOT_ROOT, errno, "/");
    /* The jail's own root holds only the mount points: nothing may be created in it. */
    {
        struct mount_attr attr;
        memset(&attr, 0, sizeof attr);
        attr.attr_set = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
        if (syscall(SYS_mount_setattr, AT_FDCWD, "/", 0, &attr, sizeof attr) < 0)
            fail(AIOGAOL_STEP_ROOT_READONLY, errno, "/");
    }
}

void build_jail(void)
{
    build_mounts();
    if (sethostname(plan.hostname, str_len(plan.hostname)) < 0)
        fail(AIOGAOL_STEP_HOSTNAME, errno, plan.hostname);
}

