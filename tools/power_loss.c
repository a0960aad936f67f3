/* LD_PRELOAD shim that turns a SIGKILL of redis-server into a power loss, for the crash tests.
 *
 * Data written to files whose name ends in ".aof" is held in this process's memory until the
 * process calls fsync or fdatasync on them, as if the kernel's page cache were volatile. Killing the process then loses exactly what was never fsynced, which is what an
 * OS crash or power loss loses. Build: python -m tools.power_loss (gcc -shared -fPIC -O2 -o power_loss.so
 * power_loss.c -ldl -pthread).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#define MAX_FDS 4096

struct pending {
    int tracked;
    char *data;
    size_t len, cap;
};

static struct pending files[MAX_FDS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER; /* redis fsyncs from a background thread */

static ssize_t real_write(int fd, const void *buf, size_t count) {
    static ssize_t (*fn)(int, const void *, size_t);
    if (!fn) fn = (ssize_t(*)(int, const void *, size_t))dlsym(RTLD_NEXT, "write");
    return fn(fd, buf, count);
}

static int tracked(int fd) { return fd >= 0 && fd < MAX_FDS && files[fd].tracked; }

static void track(int fd, const char *path) {
    size_t n = strlen(path);
    if (fd < 0 || fd >= MAX_FDS || n < 4 || strcmp(path + n - 4, ".aof") != 0) return;
    pthread_mutex_lock(&lock);
    files[fd].tracked = 1;
    files[fd].len = 0;
    pthread_mutex_unlock(&lock);
}

/* Write the held data to the file; called with the lock held. */
static int release(int fd) {
    struct pending *f = &files[fd];
    size_t done = 0;
    while (done < f->len) {
        ssize_t n = real_write(fd, f->data + done, f->len - done);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return -1;
        done += (size_t)n;
    }
    f->len = 0;
    return 0;
}

static int open_and_track(const char *symbol, const char *path, int flags, mode_t mode) {
    int (*fn)(const char *, int, ...) = (int (*)(const char *, int, ...))dlsym(RTLD_NEXT, symbol);
    int fd = fn(path, flags, mode);
    track(fd, path);
    return fd;
}

/* open and open64 (redis calls both): the mode argument is only there with O_CREAT or O_TMPFILE. */
#define TRACKING_OPEN(symbol)                                                   \
    int symbol(const char *path, int flags, ...) {                              \
        mode_t mode = 0;                                                        \
        if (flags & (O_CREAT | O_TMPFILE)) {                                    \
            va_list ap;                                                         \
            va_start(ap, flags);                                                \
            mode = va_arg(ap, int);                                             \
            va_end(ap);                                                         \
        }                                                                       \
        return open_and_track(#symbol, path, flags, mode);                      \
    }

TRACKING_OPEN(open)
TRACKING_OPEN(open64)

ssize_t write(int fd, const void *buf, size_t count) {
    pthread_mutex_lock(&lock);
    if (!tracked(fd)) {
        pthread_mutex_unlock(&lock);
        return real_write(fd, buf, count);
    }
    struct pending *f = &files[fd];
    if (f->len + count > f->cap) {
        size_t cap = f->cap ? f->cap : 1 << 16;
        while (cap < f->len + count) cap *= 2;
        char *data = realloc(f->data, cap);
        if (!data) {
            pthread_mutex_unlock(&lock);
            errno = ENOMEM;
            return -1;
        }
        f->data = data;
        f->cap = cap;
    }
    memcpy(f->data + f->len, buf, count);
    f->len += count;
    pthread_mutex_unlock(&lock);
    return (ssize_t)count;
}

static int sync_with(const char *symbol, int fd) {
    pthread_mutex_lock(&lock);
    int failed = tracked(fd) && release(fd) != 0;
    pthread_mutex_unlock(&lock);
    if (failed) return -1;
    int (*fn)(int) = (int (*)(int))dlsym(RTLD_NEXT, symbol);
    return fn(fd);
}

int fsync(int fd) { return sync_with("fsync", fd); }

int fdatasync(int fd) { return sync_with("fdatasync", fd); }

int close(int fd) {
    pthread_mutex_lock(&lock);
    if (tracked(fd)) { /* what was never fsynced is lost, closed or not (redis fsyncs before closing) */
        files[fd].tracked = 0;
        files[fd].len = 0;
    }
    pthread_mutex_unlock(&lock);
    int (*fn)(int) = (int (*)(int))dlsym(RTLD_NEXT, "close");
    return fn(fd);
}
