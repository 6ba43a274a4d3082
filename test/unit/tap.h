/* A tiny TAP producer for unit tests: ok(), is(), subtest(), done().
 * Exit status: 0 all passed, 1 something failed, 77 skipped (meson SKIP). */
#ifndef GW_TEST_TAP_H
#define GW_TEST_TAP_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int tap_n, tap_failed;

#define ok(cond, ...) tap_ok(!!(cond), __FILE__, __LINE__, #cond, __VA_ARGS__)
#define is(got, want, ...)                                                                        \
    do {                                                                                          \
        long long tap_g_ = (long long)(got), tap_w_ = (long long)(want);                          \
        if (!tap_ok(tap_g_ == tap_w_, __FILE__, __LINE__, #got " == " #want, __VA_ARGS__))        \
            printf("#   got %lld, want %lld\n", tap_g_, tap_w_);                                  \
    } while (0)

__attribute__((format(printf, 5, 6))) static int tap_ok(int cond, const char *file, int line,
                                                        const char *expr, const char *fmt, ...);

#include <stdarg.h>
static int tap_ok(int cond, const char *file, int line, const char *expr, const char *fmt, ...)
{
    va_list ap;
    tap_n++;
    printf("%sok %d - ", cond ? "" : "not ", tap_n);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    if (!cond) {
        tap_failed++;
        printf("#   failed at %s:%d: %s\n", file, line, expr);
    }
    return cond;
}

#define subtest(name, fn)                                                                         \
    do {                                                                                          \
        printf("# %s\n", name);                                                                   \
        fn();                                                                                     \
    } while (0)

static inline int done_testing(void)
{
    printf("1..%d\n", tap_n);
    return tap_failed ? 1 : 0;
}

static inline void skip_all(const char *why)
{
    printf("1..0 # SKIP %s\n", why);
    exit(77);
}

#endif
