/*
 * The pod sandbox's process for the local node's pause image (hack/cluster-up.sh): holds
 * the pod's namespaces, reaps orphaned children, and exits on SIGINT or SIGTERM. Built
 * statically (gcc -static) into an image of its own (buildah from scratch).
 */
#include <signal.h>
#include <stddef.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) {
    (void)sig;
    _exit(0);
}

static void reap(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(void) {
    struct sigaction term = {0}, child = {0};
    term.sa_handler = stop;
    sigaction(SIGINT, &term, NULL);
    sigaction(SIGTERM, &term, NULL);
    child.sa_handler = reap;
    child.sa_flags = SA_NOCLDSTOP;
    sigaction(SIGCHLD, &child, NULL);
    for (;;) {
        pause();
    }
}
