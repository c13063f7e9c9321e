/* The pod sandbox's pause process (Meshgate's local image: localhost/pause:local).
 *
 * PID 1 of a pod's sandbox: holds the namespaces, reaps orphaned children (SIGCHLD) and exits 0
 * on SIGTERM or SIGINT.  Signals are blocked outside sigsuspend(), so a signal that arrives
 * between the check of `stop` and the wait cannot be lost.
 *
 * Build: gcc -Os -static -o pause pause.c   (deploy/images/build.py does this)
 */
#include <signal.h>
#include <stddef.h>
#include <sys/wait.h>

static volatile sig_atomic_t stop;

static void on_stop(int sig) {
    (void)sig;
    stop = 1;
}

static void on_child(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(void) {
    sigset_t block, wait_mask;
    struct sigaction sa = {0};

    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGCHLD);
    if (sigprocmask(SIG_BLOCK, &block, &wait_mask) != 0)
        return 1;
    sigdelset(&wait_mask, SIGTERM);
    sigdelset(&wait_mask, SIGINT);
    sigdelset(&wait_mask, SIGCHLD);

    sigfillset(&sa.sa_mask);
    sa.sa_handler = on_stop;
    if (sigaction(SIGTERM, &sa, NULL) != 0 || sigaction(SIGINT, &sa, NULL) != 0)
        return 1;
    sa.sa_handler = on_child;
    sa.sa_flags = SA_NOCLDSTOP | SA_RESTART;
    if (sigaction(SIGCHLD, &sa, NULL) != 0)
        return 1;

    while (!stop)
        sigsuspend(&wait_mask);
    return 0;
}
