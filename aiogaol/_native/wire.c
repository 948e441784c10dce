/*
 * The wire: what the helper's processes say and read.
 *
 * The records on the error pipe and the lifeline (jail.h), the one failure path fail(), the timing marks
 * of --timings, the parsing of the helper's arguments into the plan (parse_args), the spawner's requests
 * (recv_request, parse_request: one SOCK_SEQPACKET message each) and its reports to the server
 * (report).  Nothing here makes a namespace or a mount.
 */
#include "core.h"

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

int err_fd = -1;
/* Set by the spawner while it handles one request: a failure then returns to its loop instead of
 * ending it.  Cleared in every process it clones, where fail() ends the process as usual. */
jmp_buf *fail_escape;

size_t str_len(const char *s)
{
    size_t n = 0;
    while (s && s[n])
        n++;
    return n;
}

void copy_str(char *dst, size_t cap, const char *src)
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

void send_record(int fd, int kind, int step, int err, int value, const char *detail)
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

/* len bytes of data and n fds (SCM_RIGHTS, at most MAX_REQ_FDS) in one message on sock, retried on
 * EINTR: sendmsg's result.  For the spawner's hand-over of a request and a warm init's of its job. */
ssize_t send_fds(int sock, const void *data, size_t len, const int *fds, int n)
{
    static char cbuf[CMSG_SPACE(sizeof(int) * MAX_REQ_FDS)] __attribute__((aligned(8)));
    struct msghdr msg;
    struct iovec iov;
    struct cmsghdr *c;
    ssize_t sent;
    memset(&msg, 0, sizeof msg);
    iov.iov_base = (void *)data;
    iov.iov_len = len;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)n);
    c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)n);
    memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)n);
    while ((sent = sendmsg(sock, &msg, MSG_NOSIGNAL)) < 0 && errno == EINTR)
        ;
    return sent;
}

/* The one failure path: a record on the error pipe, then _exit.  errno is captured by the caller. */
void fail(int step, int err, const char *detail)
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

uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* With --timings, when a step was reached: the server lines these up with its own clock (the same
 * CLOCK_MONOTONIC; no time namespace is made) to say where a spawn's time goes. */
void mark(int step) { mark_at(step, now_ns()); }
/* ------------------------------------------------------------------------------------------------ */
/* The plan, as parsed from the helper's arguments                                                  */
struct plan plan;
int switch_identity;

static void time_record(struct aiogaol_record *rec, int step, uint64_t ns)
{
    memset(rec, 0, sizeof *rec);
    rec->kind = AIOGAOL_RECORD_TIME;
    rec->step = step;
    memcpy(rec->detail, &ns, sizeof ns);
}

void mark_at(int step, uint64_t ns)
{
    struct aiogaol_record rec;
    if (!plan.timings || err_fd < 0)
        return;
    time_record(&rec, step, ns);
    write_all(err_fd, &rec, sizeof rec);
}

/* Init's marks after the program's exec, when the error pipe is gone: on the lifeline, before EXIT. */
void mark_lifeline(int step)
{
    struct aiogaol_record rec;
    if (!plan.timings || plan.lifeline_fd < 0)
        return;
    time_record(&rec, step, now_ns());
    send(plan.lifeline_fd, &rec, sizeof rec, MSG_NOSIGNAL);
}

unsigned long long parse_num(const char *s, int base)
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
struct sock_filter init_insns[256];
unsigned short init_len;

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


void parse_args(int argc, char **argv, char **envp)
{
    int i = 1;
    memset(&plan, 0, PLAN_HEAD);
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
        plan.ops[plan.n_ops].dev = plan.ops[plan.n_ops].ino = 0;                                   \
        plan.n_ops++;                                                                              \
    } while (0)

    for (; i < argc; i++) {
        const char *o = argv[i];
        if (strcmp(o, "--") == 0) {
            i++;
            break;
        } else if (strcmp(o, "--err") == 0) {
            NEED(1);
            /* Failures go on to the error pipe as received (req_from[0]) until init has placed its fds. */
            plan.err_fd = (int)parse_num(argv[++i], 10);
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
        } else if (strcmp(o, "--agent") == 0) {
            NEED(2);
            plan.agent_fd = (int)parse_num(argv[++i], 10);
            plan.agent_idle = (long)parse_num(argv[++i], 10);
        } else if (strcmp(o, "--deadline") == 0) {
            NEED(1);
            plan.deadline_ms = parse_num(argv[++i], 10);
        } else if (strcmp(o, "--gid") == 0) {
            NEED(1);
            plan.inside_gid = (long)parse_num(argv[++i], 10);
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

static int cmp_int(const void *x, const void *y)
{
    int a = *(const int *)x, b = *(const int *)y;
    return (a > b) - (a < b);
}

/* Close every fd from 3 up except those in keep (CPython's _close_range_except, with close_range). */
int close_all_except(int *keep, int n)
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

char *fmt_ulong(char *p, unsigned long v)
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

/* Split a blob of NUL-terminated strings into a NULL-terminated vector; the end of the blob, or NULL
 * when it holds fewer than count strings. */
const char *split_blob(const char *blob, const char *end, int count, char **vec)
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

/* The fds init is handed: the spawner receives them over its socket at whatever numbers are free, with
 * the numbers init wants (req_to, numbered as in the helper's arguments), and init moves them there
 * first thing (place_fds). */
int req_from[MAX_REQ_FDS], req_to[MAX_REQ_FDS], req_n;
int req_large;

/* ------------------------------------------------------------------------------------------------ */
/* The spawner: the helper kept running, one jail per request                                       */

/* A request is one SOCK_SEQPACKET message: int32 argc, envc, nfds; int32 target[nfds]; argc strings
 * (the helper's arguments, argv[0] included) and envc strings (the program's environment), each
 * NUL-terminated; and nfds fds as SCM_RIGHTS, the error pipe first.  The PID record, failures and EOF on
 * exec travel on the request's own error pipe.
 *
 * A request larger than one message (_spawner.MAX_MESSAGE: long arguments or environment) comes in a
 * memfd: the message is then int32 0, 0, nfds (argc 0 is never a request of its own) with nfds + 1 fds,
 * the jail's and last the memfd, which holds the whole request as one message would hold it.
 *
 * The spawner's own messages to the server, on the same socket, say which of the server's children it
 * created ahead of time (see "Waiting inits" below): int32 kind, int32 pid. */

#define MAX_LARGE_REQUEST (64u << 20) /* bytes: beyond any ARG_MAX the server's own exec would take */

/* The request in the memfd (the last fd received) read into *buf, the memfd closed; 0 if it cannot be. */
static int request_from_memfd(char **buf, size_t *cap, size_t *len)
{
    int mfd = req_from[--req_n];
    struct stat st;
    size_t got = 0;
    req_large = 1;
    if (fstat(mfd, &st) < 0 || st.st_size <= 0 || (uint64_t)st.st_size > MAX_LARGE_REQUEST)
        goto bad;
    if ((size_t)st.st_size + 1 > *cap) {
        char *grown = realloc(*buf, (size_t)st.st_size + 1);
        if (!grown)
            goto bad;
        *buf = grown;
        *cap = (size_t)st.st_size + 1;
    }
    while (got < (size_t)st.st_size) {
        ssize_t n = pread(mfd, *buf + got, (size_t)st.st_size - got, (off_t)got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            goto bad;
        got += (size_t)n;
    }
    close(mfd);
    *len = got;
    return 1;
bad:
    close(mfd);
    return 0;
}

/* Read one message and its fds into req_from/req_n; 1, or 0 at EOF (or on an error that ends the
 * reader).  *truncated says the message or its fds did not fit. */
int recv_request(int sock, char **buf, size_t *cap, size_t *len, int *truncated)
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
    req_large = 0;
    if (!*truncated && *len >= 3 * sizeof(int32_t) && req_n > 0) {
        int32_t head[3];
        memcpy(head, *buf, sizeof head);
        if (head[0] == 0 && head[1] == 0 && head[2] == req_n - 1 && !request_from_memfd(buf, cap, len))
            *truncated = 1; /* reported as a request too large to read (E2BIG), on its error pipe */
    }
    return 1;
}

/* The request's fd targets, argv and environment, then the plan from its arguments. */
void parse_request(const char *buf, size_t len)
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
void report(int sock, int kind, pid_t pid)
{
    int32_t msg[2];
    msg[0] = kind;
    msg[1] = (int32_t)pid;
    /* Blocking: the server drains these at every spawn, and there are at most two per request. */
    while (send(sock, msg, sizeof msg, MSG_NOSIGNAL) < 0 && errno == EINTR)
        ;
}

