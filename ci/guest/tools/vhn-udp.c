/* vhn-udp: the guest's UDP client (busybox's nc has no -u in Debian's build).
 *
 *   vhn-udp [-w SECONDS] [-n COUNT] [-s SIZE] [-q] HOST PORT
 *
 * Sends one datagram (stdin's content, or SIZE bytes of 'x' with -s) COUNT times (default 1)
 * and prints each reply's bytes to stdout. Exits 0 when every datagram got a reply within
 * -w seconds (default 2), 1 otherwise. -q prints only "<replies>/<sent> replies" at the end
 * (for floods: vhn-udp -q -n 1000 -s 64 10.0.2.2 7). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    int wait = 2, count = 1, size = -1, quiet = 0, opt;
    while ((opt = getopt(argc, argv, "w:n:s:q")) != -1) {
        switch (opt) {
        case 'w': wait = atoi(optarg); break;
        case 'n': count = atoi(optarg); break;
        case 's': size = atoi(optarg); break;
        case 'q': quiet = 1; break;
        default: fprintf(stderr, "usage: vhn-udp [-w SEC] [-n COUNT] [-s SIZE] [-q] HOST PORT\n"); return 2;
        }
    }
    if (argc - optind != 2) {
        fprintf(stderr, "usage: vhn-udp [-w SEC] [-n COUNT] [-s SIZE] [-q] HOST PORT\n");
        return 2;
    }
    static char msg[65536], buf[65536];
    ssize_t len = 0;
    if (size >= 0) {
        if (size > (int)sizeof msg) size = sizeof msg;
        memset(msg, 'x', size);
        len = size;
    } else {
        ssize_t n;
        while (len < (ssize_t)sizeof msg && (n = read(0, msg + len, sizeof msg - len)) > 0)
            len += n;
    }
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[optind + 1]))};
    if (inet_pton(AF_INET, argv[optind], &to.sin_addr) != 1) {
        fprintf(stderr, "vhn-udp: bad address %s\n", argv[optind]);
        return 2;
    }
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct timeval tv = {.tv_sec = wait};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&to, sizeof to) < 0) {
        perror("vhn-udp: connect");
        return 1;
    }
    int replies = 0;
    for (int i = 0; i < count; i++) {
        if (send(fd, msg, len, 0) < 0) {
            perror("vhn-udp: send");
            break;
        }
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n < 0) {
            if (!quiet) perror("vhn-udp: recv");
            continue;
        }
        replies++;
        if (!quiet) fwrite(buf, 1, n, stdout);
    }
    if (quiet) printf("%d/%d replies\n", replies, count);
    return replies == count ? 0 : 1;
}
