/* Owns the process: command line, the first config load, the workers, and
 * the main loop over signals (HUP reload, TERM/INT drain) and the admin
 * listener. Only main exits the process. */
#include "admin.h"
#include "core/clock.h"
#include "core/config.h"
#include "core/log.h"
#include "core/metrics.h"
#include "io/ring.h"
#include "policy/shared.h"
#include "tls/tls.h"
#include "worker.h"

#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <unistd.h>

static void usage(FILE *f)
{
    fprintf(f, "usage: gateway [-t|-T] -c FILE\n"
               "       gateway -V\n"
               "  -c FILE  run with this config file (libconfig)\n"
               "  -t       check the config file and exit: 0 valid, 1 invalid\n"
               "  -T       check it and print the effective config, defaults included\n"
               "  -V       print the version and exit\n");
}

static uint64_t generation;

/* Each client connection can hold two descriptors (itself and an upstream
 * connection) and a splice a pipe pair; the usual soft limit of 1024 would
 * cap a gateway far below max_connections. Raise the soft limit to the
 * hard one, and say so when even that is short. */
static void raise_fd_limit(const struct gw_config *cfg)
{
    struct rlimit rl;
    rlim_t want = (rlim_t)cfg->limits.max_connections * 2 + 1024;

    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want)
        gw_log_error("open-file limit is %llu, below the %llu that max_connections = %u may "
                     "need; raise it (ulimit -n, LimitNOFILE=, docker --ulimit nofile=)",
                     (unsigned long long)rl.rlim_cur, (unsigned long long)want,
                     cfg->limits.max_connections);
}

static void assign_slots(struct gw_config *cfg)
{
    unsigned live[GW_METRICS_MAX_LISTENS];

    for (size_t i = 0; i < cfg->nlistens; i++) {
        cfg->listens[i].slot = gw_metrics_listen_slot(cfg->listens[i].addr.text);
        if (i < GW_METRICS_MAX_LISTENS)
            live[i] = cfg->listens[i].slot;
    }
    gw_metrics_listeners_live(live, cfg->nlistens < GW_METRICS_MAX_LISTENS
                                        ? (unsigned)cfg->nlistens
                                        : GW_METRICS_MAX_LISTENS);
    for (size_t i = 0; i < cfg->nroutes; i++)
        cfg->routes[i].metrics_slot = gw_metrics_route_slot(cfg->routes[i].name);
    for (size_t i = 0; i < cfg->nservers; i++)
        cfg->servers[i].metrics_slot =
            gw_metrics_server_slot(cfg->servers[i].upstream->name, cfg->servers[i].addr.text);
    cfg->generation = ++generation;
}

/* Returns the snapshot now running: the new one (main holds one reference
 * on it, the old one's is dropped) or, when the file is bad, the old. */
static struct gw_config *reload(const char *path, struct gw_config *running)
{
    struct gw_config *cfg;
    char err[1024];

    if (gw_config_load(path, &cfg, err, sizeof(err)) != 0 ||
        gw_tls_load(cfg, err, sizeof(err)) != 0) {
        /* certificates are loaded and checked before anything changes:
         * a bad one keeps the old config (and its certificates) serving */
        gw_log_error("reload failed, keeping generation %llu: %s",
                     (unsigned long long)generation, err);
        gw_config_unref(cfg);
        gw_admin.reloads_failed++;
        gw_admin.last_reload_ok = false;
        return running;
    }
    /* New listen and admin addresses must be bindable before anything
     * changes, or the reload fails as a bad file does. */
    if (gw_workers_check_listen(cfg, running, err, sizeof(err)) != 0 ||
        (strcmp(cfg->admin.text, running->admin.text) != 0 &&
         gw_admin_open(&cfg->admin, err, sizeof(err)) != 0)) {
        gw_log_error("reload failed, keeping generation %llu: %s", (unsigned long long)generation,
                     err);
        gw_config_unref(cfg);
        gw_admin.reloads_failed++;
        gw_admin.last_reload_ok = false;
        return running;
    }
    if (cfg->workers != running->workers)
        gw_log_error("reload: 'workers' changed from %u to %u; that takes a restart, "
                     "until then %u workers serve",
                     running->workers, cfg->workers, gw_workers_resolve(running->workers));
    if (cfg->tls_helpers != running->tls_helpers)
        gw_log_error("reload: 'tls_helpers' changed from %d to %d; that takes a restart",
                     running->tls_helpers, cfg->tls_helpers);
    assign_slots(cfg);
    gw_policy_bind(cfg, running);
    gw_workers_publish(cfg);
    gw_log_error("reload: now serving generation %llu from %s", (unsigned long long)generation,
                 path);
    gw_admin.generation = generation;
    gw_admin.reloads_ok++;
    gw_admin.last_reload_ok = true;
    gw_admin.cfg = cfg;
    gw_admin.loaded_at = (double)gw_clock_wall_us() / 1e6;
    gw_config_unref(running);
    return cfg;
}

int main(int argc, char **argv)
{
    const char *path = NULL;
    bool test_only = false, dump = false;
    struct gw_config *cfg, *running;
    char err[1024];
    sigset_t mask;
    int sfd, opt, ret;
    struct gw_ring probe;
    uint64_t drain_deadline = 0;
    bool draining = false;

    while ((opt = getopt(argc, argv, "c:tTVh")) != -1) {
        switch (opt) {
        case 'c':
            path = optarg;
            break;
        case 't':
            test_only = true;
            break;
        case 'T':
            test_only = dump = true;
            break;
        case 'V':
            printf("gateway %s\n", GW_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (path == NULL || optind != argc) {
        usage(stderr);
        return 2;
    }
    if (gw_config_load(path, &cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "gateway: %s\n", err);
        return 1;
    }
    if (gw_tls_load(cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "gateway: %s\n", err);
        gw_config_unref(cfg);
        return 1;
    }
    if (test_only) {
        if (dump)
            gw_config_dump(cfg, stdout);
        fprintf(stderr, "gateway: %s: configuration is valid\n", path);
        gw_config_unref(cfg);
        return 0;
    }

    /* Signals go to the signalfd only: block them before any thread starts
     * so that workers inherit the mask. */
    sigemptyset(&mask);
    sigaddset(&mask, SIGHUP);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    signal(SIGPIPE, SIG_IGN);
    sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd == -1) {
        fprintf(stderr, "gateway: signalfd: %s\n", strerror(errno));
        goto fail;
    }

    raise_fd_limit(cfg);

    ret = gw_ring_init(&probe, 8, err, sizeof(err));
    if (ret < 0) {
        fprintf(stderr, "gateway: %s\n", err);
        goto fail;
    }
    gw_ring_exit(&probe);

    if (gw_admin_open(&cfg->admin, err, sizeof(err)) != 0) {
        fprintf(stderr, "gateway: %s\n", err);
        goto fail;
    }
    gw_admin.start_time = (double)gw_clock_wall_us() / 1e6;

    unsigned n = gw_workers_resolve(cfg->workers);
    gw_metrics_init(n);
    assign_slots(cfg);
    gw_policy_seed();
    gw_policy_bind(cfg, NULL);
    gw_admin.cfg = cfg;
    gw_admin.loaded_at = gw_admin.start_time;
    gw_admin.generation = generation;
    gw_admin.last_reload_ok = true;
    if (gw_workers_start(cfg, n, err, sizeof(err)) != 0) {
        fprintf(stderr, "gateway: %s\n", err);
        goto fail;
    }
    running = cfg;
    gw_admin.ready = true;
    gw_log_error("serving generation %llu from %s with %u workers",
                 (unsigned long long)generation, path, n);

    for (;;) {
        struct pollfd fds[80];
        unsigned nfds;
        struct signalfd_siginfo si;

        fds[0] = (struct pollfd){.fd = sfd, .events = POLLIN};
        nfds = 1 + gw_admin_pollfds(fds + 1, 79);
        ret = poll(fds, nfds, draining ? 20 : 200);
        if (ret < 0 && errno != EINTR) {
            gw_log_error("poll: %s", strerror(errno));
            break;
        }
        gw_workers_tick();
        if (ret > 0)
            gw_admin_handle(fds + 1, nfds - 1);
        while (read(sfd, &si, sizeof(si)) == sizeof(si)) {
            if (si.ssi_signo == SIGHUP && !draining) {
                running = reload(path, running);
            } else if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) {
                if (draining) {
                    gw_log_error("second signal: exiting now");
                    _exit(0);
                }
                draining = true;
                gw_admin.draining = true;
                drain_deadline = gw_clock_update() + running->drain_timeout_ms;
                gw_log_error("draining: no new connections, up to %u ms for requests in flight",
                             running->drain_timeout_ms);
                gw_workers_drain();
            }
        }
        if (draining) {
            if (gw_workers_done())
                break;
            if (gw_clock_update() >= drain_deadline) {
                gw_log_error("drain timeout: closing what is left");
                break;
            }
        }
    }
    gw_workers_stop();
    gw_workers_join();
    gw_log_error("stopped");
    return 0;

fail:
    gw_config_unref(cfg);
    return 1;
}
