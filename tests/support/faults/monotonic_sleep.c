/* Sleeps on the monotonic clock go straight to the kernel: libfaketime
   0.9.10 with FAKETIME_DONT_FAKE_MONOTONIC=1 shifts their absolute deadline
   as if it were wall-clock time, and the kernel refuses it (EINVAL). */
#define CLOCK_MONOTONIC 1
#define RTLD_NEXT ((void *)-1l)
struct timespec;
extern long syscall(long number, ...);
extern int *__errno_location(void);
extern void *dlsym(void *handle, const char *symbol);

int clock_nanosleep(int clock_id, int flags, const struct timespec *request,
                    struct timespec *remain) {
    if (clock_id == CLOCK_MONOTONIC) {
        long result = syscall(SYS_CLOCK_NANOSLEEP, clock_id, flags, request, remain);
        return result == -1 ? *__errno_location() : 0;
    }
    int (*next)(int, int, const struct timespec *, struct timespec *) =
        (int (*)(int, int, const struct timespec *, struct timespec *))dlsym(
            RTLD_NEXT, "clock_nanosleep");
    return next(clock_id, flags, request, remain);
}
