/* netprobe: the two ends of a TCP exchange for the network tests, built statically so that it
 * runs in any VPS (a minimal template has no server, nc or python) and on the host alike.
 *
 *   netprobe serve PORT COUNT         listen on [::]:PORT (IPv4 too), answer COUNT connections
 *                                     with "pong from <local address>\n", then exit
 *   netprobe connect ADDR PORT MS [SRC]  connect (from SRC if given: IP_FREEBIND, so an address
 *                                     the host has not given works too), print the answer;
 *                                     exit 0 on an answer, 1 on failure or after MS ms
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int parse(const char *text, int port, struct sockaddr_storage *ss, socklen_t *len) {
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, text, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons(port);
        *len = sizeof(*a4);
        return AF_INET;
    }
    if (inet_pton(AF_INET6, text, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons(port);
        *len = sizeof(*a6);
        return AF_INET6;
    }
    fprintf(stderr, "netprobe: bad address %s\n", text);
    exit(2);
}

static int serve(int port, int count) {
    int fd = socket(AF_INET6, SOCK_STREAM, 0), off = 0, on = 1;
    struct sockaddr_in6 any = {.sin6_family = AF_INET6, .sin6_port = htons(port)};
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof(off));
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
    if (bind(fd, (struct sockaddr *)&any, sizeof(any)) || listen(fd, 16)) {
        perror("netprobe: listen");
        return 1;
    }
    printf("listening\n");
    fflush(stdout);
    for (int i = 0; i < count; i++) {
        struct sockaddr_in6 local;
        socklen_t len = sizeof(local);
        int c = accept(fd, NULL, NULL);
        if (c < 0)
            continue;
        char text[INET6_ADDRSTRLEN] = "?", reply[128];
        if (getsockname(c, (struct sockaddr *)&local, &len) == 0)
            inet_ntop(AF_INET6, &local.sin6_addr, text, sizeof(text));
        const char *shown = strncmp(text, "::ffff:", 7) == 0 ? text + 7 : text;
        int n = snprintf(reply, sizeof(reply), "pong from %s\n", shown);
        if (write(c, reply, n) != n)
            perror("netprobe: write");
        close(c);
    }
    return 0;
}

static int probe(const char *addr, int port, int ms, const char *src) {
    struct sockaddr_storage to, from;
    socklen_t tolen, fromlen;
    int family = parse(addr, port, &to, &tolen), on = 1;
    int fd = socket(family, SOCK_STREAM, 0);
    if (src) {
        parse(src, 0, &from, &fromlen);
        setsockopt(fd, family == AF_INET ? IPPROTO_IP : IPPROTO_IPV6,
                   family == AF_INET ? IP_FREEBIND : IPV6_FREEBIND, &on, sizeof(on));
        if (bind(fd, (struct sockaddr *)&from, fromlen)) {
            perror("netprobe: bind");
            return 1;
        }
    }
    fcntl(fd, F_SETFL, O_NONBLOCK);
    if (connect(fd, (struct sockaddr *)&to, tolen) && errno != EINPROGRESS) {
        perror("netprobe: connect");
        return 1;
    }
    struct pollfd p = {.fd = fd, .events = POLLIN};
    char buf[256];
    if (poll(&p, 1, ms) != 1) {
        fprintf(stderr, "netprobe: no answer from %s within %d ms\n", addr, ms);
        return 1;
    }
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    if (n <= 0) {
        fprintf(stderr, "netprobe: %s: %s\n", addr, n ? strerror(errno) : "closed");
        return 1;
    }
    buf[n] = 0;
    fputs(buf, stdout);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 4 && !strcmp(argv[1], "serve"))
        return serve(atoi(argv[2]), atoi(argv[3]));
    if ((argc == 5 || argc == 6) && !strcmp(argv[1], "connect"))
        return probe(argv[2], atoi(argv[3]), atoi(argv[4]), argc == 6 ? argv[5] : NULL);
    fprintf(stderr, "usage: netprobe serve PORT COUNT | connect ADDR PORT MS [SRC]\n");
    return 2;
}
