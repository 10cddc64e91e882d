/* The native spawner: a child started by clone(CLONE_VM | CLONE_VFORK) that
 * sets itself up and execs the program, with no helper program in between.
 *
 * What subprocess cannot do without forking the whole interpreter (a
 * preexec_fn) is done here in the child, before exec, with system calls
 * only: a new session, the cgroup joined, the three standard descriptors,
 * every other descriptor closed on exec, the working directory, the umask,
 * the user switch, the death signal and the check that the parent is still
 * the supervisor. See core/spawn.py for how it is chosen and what it
 * replaces.
 *
 * A child for a cgroup is created in it where the kernel can (clone3 with
 * CLONE_INTO_CGROUP, Linux 5.7, here on x86-64): moving a process into a
 * cgroup by writing cgroup.procs waits for an RCU grace period, 0.1 to
 * 20 ms by machine and load, all of it with the parent suspended. Elsewhere,
 * or where clone3 is refused (an older kernel, a seccomp filter), the child
 * writes its cgroup.procs as its first step.
 *
 * The child shares the parent's memory until it execs (the parent waits),
 * so it touches nothing but its own stack and the arguments prepared by the
 * parent, and it calls no library function that takes a lock or allocates:
 * credentials are changed by raw system calls (glibc's setuid() would
 * signal every thread of the parent to change theirs too), as glibc's own
 * posix_spawn child does.
 */

#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

#if defined(__x86_64__)
#define HAVE_CLONE_INTO_CGROUP 1
#ifndef SYS_clone3
#define SYS_clone3 435
#endif
#define SPAWN_CLONE_INTO_CGROUP 0x200000000ULL

/* The kernel's struct clone_args (linux/sched.h), up to its cgroup member. */
struct spawn_clone_args {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls,
        set_tid, set_tid_size, cgroup;
};

/* 1 until clone3 with CLONE_INTO_CGROUP has been refused as unknown. */
static int clone_into_cgroup = 1;
#endif

#define STACK_SIZE (256 * 1024)
#define MAX_GROUPS 65536

/* Where the child failed: reported to the parent with errno. */
enum stage {
    STAGE_SETSID, STAGE_CGROUP, STAGE_STDIO, STAGE_CLOSE, STAGE_CWD, STAGE_GROUPS,
    STAGE_GID, STAGE_UID, STAGE_DEATHSIG, STAGE_PARENT, STAGE_EXEC,
};
/* The filename of the OSError for a stage other than the cwd and the exec. */
static const char *const stage_names[] = {
    "setsid", "cgroup.procs", "stdio", "close_range", "cwd", "setgroups", "setresgid",
    "setresuid", "PR_SET_PDEATHSIG", "getppid", "execve",
};

struct job {
    const char *path;
    char *const *argv;
    char *const *envp;
    const char *cwd;
    int fds[3];       /* stdin, stdout, stderr of the child */
    int cgroup_fd;    /* an open cgroup.procs to write, or -1 */
    long uid, gid;    /* -1: unchanged */
    int ngroups;      /* -1: unchanged */
    gid_t *groups;
    int umask;        /* -1: unchanged */
    pid_t parent;
    int report;       /* write end of the error pipe (close-on-exec) */
    sigset_t mask;    /* the mask to exec with */
};

static void fail(const struct job *job, int stage) {
    int report[2] = {stage, errno};
    ssize_t ignored = write(job->report, report, sizeof report);
    (void)ignored;
    _exit(127);
}

static int child(void *arg) {
    const struct job *job = arg;
    int fds[3];

    if (setsid() < 0)
        fail(job, STAGE_SETSID);
    if (job->cgroup_fd >= 0 && write(job->cgroup_fd, "0", 1) != 1)
        fail(job, STAGE_CGROUP);  /* outside its cgroup it would escape the stop */
    /* Sources below 3 would be overwritten by an earlier dup2: move them up. */
    for (int i = 0; i < 3; i++) {
        fds[i] = job->fds[i];
        if (fds[i] < 3 && (fds[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 3)) < 0)
            fail(job, STAGE_STDIO);
    }
    for (int i = 0; i < 3; i++)
        if (dup2(fds[i], i) < 0)  /* the copy is inherited across exec */
            fail(job, STAGE_STDIO);
    if (syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC) < 0)
        fail(job, STAGE_CLOSE);
    if (job->cwd != NULL && chdir(job->cwd) < 0)
        fail(job, STAGE_CWD);
    if (job->umask >= 0)
        umask((mode_t)job->umask);
    if (job->ngroups >= 0 && syscall(SYS_setgroups, (size_t)job->ngroups, job->groups) < 0)
        fail(job, STAGE_GROUPS);
    if (job->gid >= 0 && syscall(SYS_setresgid, (gid_t)job->gid, (gid_t)job->gid,
                                 (gid_t)job->gid) < 0)
        fail(job, STAGE_GID);
    if (job->uid >= 0 && syscall(SYS_setresuid, (uid_t)job->uid, (uid_t)job->uid,
                                 (uid_t)job->uid) < 0)
        fail(job, STAGE_UID);
    /* After the switch: a change of credentials clears the death signal. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0)
        fail(job, STAGE_DEATHSIG);
    if (getppid() != job->parent) {
        /* The parent died before prctl took effect: nobody would stop us. */
        errno = ESRCH;
        fail(job, STAGE_PARENT);
    }
    /* The parent's handlers are its own: the program starts with the
     * defaults, except what the parent ignores (as subprocess keeps it), and
     * SIGPIPE and SIGXFSZ, which Python ignores for itself. */
    for (int sig = 1; sig < NSIG; sig++) {
        struct sigaction old;
        if (sig == SIGKILL || sig == SIGSTOP || sigaction(sig, NULL, &old) < 0)
            continue;  /* those two, and the C library's own */
        if (old.sa_handler != SIG_DFL &&
            (old.sa_handler != SIG_IGN || sig == SIGPIPE || sig == SIGXFSZ)) {
            struct sigaction dfl;
            memset(&dfl, 0, sizeof dfl);
            dfl.sa_handler = SIG_DFL;
            sigaction(sig, &dfl, NULL);
        }
    }
    sigprocmask(SIG_SETMASK, &job->mask, NULL);
    execve(job->path, job->argv, job->envp);
    fail(job, STAGE_EXEC);
    return 127;
}

#ifdef HAVE_CLONE_INTO_CGROUP
/* clone3(args), then child(job) on the new stack in the child, which never
 * returns here: glibc has no clone3() to call, and a child that returned
 * from a system call wrapper on the parent's stack would overwrite the
 * frame the parent returns through. */
static pid_t clone3_child(struct spawn_clone_args *args, struct job *job) {
    long ret;
    int (*fn)(void *) = child;
    __asm__ volatile(
        "syscall\n\t"
        "testq %%rax, %%rax\n\t"
        "jnz 1f\n\t"
        "xorl %%ebp, %%ebp\n\t"      /* the child: the kernel set rsp to the stack's top */
        "movq %%rbx, %%rdi\n\t"
        "call *%%rdx\n\t"
        "movl %%eax, %%edi\n\t"      /* not reached: child() execs or exits */
        "movl $60, %%eax\n\t"        /* SYS_exit */
        "syscall\n\t"
        "hlt\n\t"
        "1:\n\t"
        : "=a"(ret)
        : "0"((long)SYS_clone3), "D"(args), "S"(sizeof *args), "d"(fn), "b"(job)
        : "rcx", "r11", "memory", "cc");
    if (ret < 0) {
        errno = (int)-ret;
        return -1;
    }
    return (pid_t)ret;
}
#endif

/* The child, in its cgroup if `cgroup_dir` >= 0 and the kernel can; else the
 * child joins it by writing job->cgroup_fd. */
static pid_t start_child(struct job *job, void *stack, int cgroup_dir) {
#ifdef HAVE_CLONE_INTO_CGROUP
    if (cgroup_dir >= 0 && clone_into_cgroup) {
        struct spawn_clone_args args;
        memset(&args, 0, sizeof args);
        args.flags = CLONE_VM | CLONE_VFORK | SPAWN_CLONE_INTO_CGROUP;
        args.exit_signal = SIGCHLD;
        args.stack = (uint64_t)(uintptr_t)stack;
        args.stack_size = STACK_SIZE;
        args.cgroup = (uint64_t)cgroup_dir;
        int cgroup_fd = job->cgroup_fd;
        job->cgroup_fd = -1;  /* created in it: nothing to write */
        pid_t pid = clone3_child(&args, job);
        job->cgroup_fd = cgroup_fd;
        if (pid >= 0)
            return pid;
        /* Unknown to this kernel or refused by a filter: never again. Any
         * other failure (the cgroup's own) is reported by the write, whose
         * error names the cgroup step as it always has. */
        if (errno == ENOSYS || errno == E2BIG || errno == EINVAL)
            clone_into_cgroup = 0;
    }
#else
    (void)cgroup_dir;
#endif
    return clone(child, (char *)stack + STACK_SIZE, CLONE_VM | CLONE_VFORK | SIGCHLD, job);
}

/* A list of str/bytes as a NULL-terminated array of C strings (fs-encoded). */
static char **strings(PyObject *seq, PyObject **keep, const char *what) {
    PyObject *fast = PySequence_Fast(seq, what);
    if (fast == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    PyObject *encoded = PyList_New(n);
    char **out = PyMem_Calloc((size_t)n + 1, sizeof(char *));
    if (encoded == NULL || out == NULL)
        goto error;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = NULL;
        if (!PyUnicode_FSConverter(PySequence_Fast_GET_ITEM(fast, i), &item))
            goto error;
        PyList_SET_ITEM(encoded, i, item);  /* FSConverter refused embedded NULs */
        out[i] = PyBytes_AS_STRING(item);
    }
    Py_DECREF(fast);
    *keep = encoded;
    return out;
error:
    Py_DECREF(fast);
    Py_XDECREF(encoded);
    PyMem_Free(out);
    return NULL;
}

PyDoc_STRVAR(spawn_doc,
"spawn(path, argv, env, cwd, fds, cgroup_fd, cgroup_dir, uid, gid, groups, umask,\n"
"      parent) -> pid\n\n"
"Start `path` with `argv` and `env` (lists of str or bytes; env as KEY=VALUE)\n"
"in a new session with the death signal set; `fds` are its stdin, stdout and\n"
"stderr; `cgroup_fd` an open cgroup.procs to join, or -1, and `cgroup_dir`\n"
"its cgroup's directory, open, to create the child in where the kernel can\n"
"(else -1: the child writes cgroup_fd); `uid`, `gid` and\n"
"`umask` -1 when unchanged; `groups` the supplementary groups, or None;\n"
"`parent` the pid the child checks is still its parent. Raises OSError with\n"
"the errno of the step that failed: `filename` is cwd for the working\n"
"directory, path for the exec, else the step's name (STEPS).");

static PyObject *spawn(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *path_obj, *argv_obj, *env_obj, *cwd_obj, *groups_obj;
    PyObject *path = NULL, *cwd = NULL, *argv_keep = NULL, *env_keep = NULL;
    char **argv = NULL, **envp = NULL;
    struct job job;
    int report[2] = {-1, -1};
    void *stack = MAP_FAILED;
    PyObject *result = NULL;
    int fd0, fd1, fd2, cgroup_fd, cgroup_dir, umask_value, parent;
    long uid, gid;

    if (!PyArg_ParseTuple(args, "OOOO(iii)iillOii:spawn", &path_obj, &argv_obj, &env_obj,
                          &cwd_obj, &fd0, &fd1, &fd2, &cgroup_fd, &cgroup_dir, &uid, &gid,
                          &groups_obj, &umask_value, &parent))
        return NULL;
    memset(&job, 0, sizeof job);
    job.ngroups = -1;
    if (!PyUnicode_FSConverter(path_obj, &path))
        return NULL;
    if (cwd_obj != Py_None && !PyUnicode_FSConverter(cwd_obj, &cwd))
        goto done;
    if ((argv = strings(argv_obj, &argv_keep, "argv")) == NULL)
        goto done;
    if (argv[0] == NULL) {
        PyErr_SetString(PyExc_ValueError, "argv must not be empty");
        goto done;
    }
    if ((envp = strings(env_obj, &env_keep, "env")) == NULL)
        goto done;
    if (groups_obj != Py_None) {
        PyObject *fast = PySequence_Fast(groups_obj, "groups");
        if (fast == NULL)
            goto done;
        Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
        if (n > MAX_GROUPS) {
            Py_DECREF(fast);
            PyErr_SetString(PyExc_ValueError, "too many groups");
            goto done;
        }
        job.groups = PyMem_Calloc((size_t)n + 1, sizeof(gid_t));
        if (job.groups == NULL) {
            Py_DECREF(fast);
            PyErr_NoMemory();
            goto done;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            long g = PyLong_AsLong(PySequence_Fast_GET_ITEM(fast, i));
            if (g == -1 && PyErr_Occurred()) {
                Py_DECREF(fast);
                goto done;
            }
            job.groups[i] = (gid_t)g;
        }
        job.ngroups = (int)n;
        Py_DECREF(fast);
    }
    job.path = PyBytes_AS_STRING(path);
    job.argv = argv;
    job.envp = envp;
    job.cwd = cwd != NULL ? PyBytes_AS_STRING(cwd) : NULL;
    job.fds[0] = fd0;
    job.fds[1] = fd1;
    job.fds[2] = fd2;
    job.cgroup_fd = cgroup_fd;
    job.uid = uid;
    job.gid = gid;
    job.umask = umask_value;
    job.parent = (pid_t)parent;

    if (pipe2(report, O_CLOEXEC) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    job.report = report[1];
    stack = mmap(NULL, STACK_SIZE, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }

    /* No handler may run in the child while it shares our memory. */
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &job.mask);
    pid_t pid = start_child(&job, stack, cgroup_dir);
    int clone_errno = errno;
    pthread_sigmask(SIG_SETMASK, &job.mask, NULL);
    close(report[1]);
    report[1] = -1;
    if (pid < 0) {
        errno = clone_errno;
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }

    /* Close-on-exec: an exec closes it (nothing to read), a failure wrote first. */
    int failure[2];
    ssize_t got;
    do {
        got = read(report[0], failure, sizeof failure);
    } while (got < 0 && errno == EINTR);
    if (got == (ssize_t)sizeof failure) {
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
            ;
        PyObject *name = NULL;
        if (failure[0] == STAGE_CWD && cwd_obj != Py_None)
            name = Py_NewRef(cwd_obj);
        else if (failure[0] == STAGE_EXEC)
            name = Py_NewRef(path_obj);
        else if (failure[0] >= 0 && failure[0] <= STAGE_EXEC)
            name = PyUnicode_FromString(stage_names[failure[0]]);
        if (name == NULL && !PyErr_Occurred())
            name = Py_NewRef(Py_None);
        if (name == NULL)
            goto done;
        errno = failure[1];
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, name);
        Py_DECREF(name);
        goto done;
    }
    result = PyLong_FromLong((long)pid);

done:
    if (stack != MAP_FAILED)
        munmap(stack, STACK_SIZE);
    if (report[0] >= 0)
        close(report[0]);
    if (report[1] >= 0)
        close(report[1]);
    PyMem_Free(job.groups);
    PyMem_Free(argv);
    PyMem_Free(envp);
    Py_XDECREF(argv_keep);
    Py_XDECREF(env_keep);
    Py_XDECREF(path);
    Py_XDECREF(cwd);
    return result;
}

PyDoc_STRVAR(creates_in_cgroup_doc,
"creates_in_cgroup() -> bool\n\n"
"Whether a child for a cgroup is created in it (clone3 with CLONE_INTO_CGROUP)\n"
"rather than moved into it by its first step: True where built for it, until\n"
"the kernel refuses clone3 as unknown.");

static PyObject *creates_in_cgroup(PyObject *Py_UNUSED(self), PyObject *Py_UNUSED(args)) {
#ifdef HAVE_CLONE_INTO_CGROUP
    return PyBool_FromLong(clone_into_cgroup);
#else
    Py_RETURN_FALSE;
#endif
}

static PyMethodDef methods[] = {
    {"spawn", spawn, METH_VARARGS, spawn_doc},
    {"creates_in_cgroup", creates_in_cgroup, METH_NOARGS, creates_in_cgroup_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "core._spawn",
    "Start a child without a helper program: see core/spawn.py.", -1, methods,
};

PyMODINIT_FUNC PyInit__spawn(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    PyObject *steps = PyTuple_New(STAGE_EXEC + 1);
    if (steps == NULL) {
        Py_DECREF(m);
        return NULL;
    }
    for (int i = 0; i <= STAGE_EXEC; i++) {
        PyObject *name = PyUnicode_FromString(stage_names[i]);
        if (name == NULL) {
            Py_DECREF(steps);
            Py_DECREF(m);
            return NULL;
        }
        PyTuple_SET_ITEM(steps, i, name);
    }
    if (PyModule_AddObject(m, "STEPS", steps) < 0) {
        Py_DECREF(steps);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
