/* vhn-udp: the guest's UDP client and echo server (busybox's nc has no -u in Debian's build).
 *
 *   vhn-udp [-w SECONDS] [-n COUNT] [-s SIZE] [-q] HOST PORT
 *   vhn-udp -l PORT [-c COUNT] [-v]
 *
 * Client: sends one datagram (stdin's content, or SIZE bytes of 'x' with -s) COUNT times
 * (default 1) and prints each reply's bytes to stdout. Exits 0 when every datagram got a reply
 * within -w seconds (default 2), 1 otherwise. -q prints only "<replies>/<sent> replies" at the
 * end (for floods: vhn-udp -q -n 1000 -s 64 10.0.2.2 7). HOST is an IPv4 or IPv6 address
 * (a link-local IPv6 one takes its interface as fe80::1%eth0).
 *
 * Server (-l): binds PORT on :: (dual-stack: IPv4 peers too; 0.0.0.0 if the kernel has no
 * IPv6), prints "listening on PORT" once bound, and echoes every datagram back to its sender,
 * until killed or, with -c, after COUNT datagrams (then prints "echoed COUNT datagrams" and
 * exits 0). -v prints one line per datagram: "ADDR PORT LENGTH". */
#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static const char usage[] = "usage: vhn-udp [-w SEC] [-n COUNT] [-s SIZE] [-q] HOST PORT\n"
                            "       vhn-udp -l PORT [-c COUNT] [-v]\n";

static char msg[65536], buf[65536];

static int port_arg(const char *s)
{
    char *end;
    long port = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || port < 0 || port > 65535) {
        fprintf(stderr, "vhn-udp: bad port %s\n", s);
        return -1;
    }
    return (int)port;
}

/* HOST PORT into *to (IPv4 or IPv6, "%IFACE" or "%INDEX" for an IPv6 scope); its length or 0. */
static socklen_t parse_addr(const char *host, int port, struct sockaddr_storage *to)
{
    memset(to, 0, sizeof *to);
    struct sockaddr_in *v4 = (struct sockaddr_in *)to;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons(port);
        return sizeof *v4;
    }
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)to;
    char addr[INET6_ADDRSTRLEN + IF_NAMESIZE + 2];
    if (strlen(host) >= sizeof addr)
        return 0;
    strcpy(addr, host);
    char *zone = strchr(addr, '%');
    if (zone) {
        *zone++ = '\0';
        v6->sin6_scope_id = if_nametoindex(zone);
        if (v6->sin6_scope_id == 0) {
            char *end;
            unsigned long idx = strtoul(zone, &end, 10);
            if (*zone == '\0' || *end != '\0' || idx == 0)
                return 0;
            v6->sin6_scope_id = (uint32_t)idx;
        }
    }
    if (inet_pton(AF_INET6, addr, &v6->sin6_addr) != 1)
        return 0;
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(port);
    return sizeof *v6;
}

static void print_peer(const struct sockaddr_storage *from, ssize_t len)
{
    char addr[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (from->ss_family == AF_INET6) {
        const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)from;
        if (IN6_IS_ADDR_V4MAPPED(&v6->sin6_addr)) /* an IPv4 peer of the dual-stack socket */
            inet_ntop(AF_INET, &v6->sin6_addr.s6_addr[12], addr, sizeof addr);
        else
            inet_ntop(AF_INET6, &v6->sin6_addr, addr, sizeof addr);
        port = ntohs(v6->sin6_port);
    } else if (from->ss_family == AF_INET) {
        const struct sockaddr_in *v4 = (const struct sockaddr_in *)from;
        inet_ntop(AF_INET, &v4->sin_addr, addr, sizeof addr);
        port = ntohs(v4->sin_port);
    }
    printf("%s %d %zd\n", addr, port, len);
    fflush(stdout);
}

static int serve(int port, int count, int verbose)
{
    int fd = socket(AF_INET6, SOCK_DGRAM, 0);
    if (fd >= 0) {
        int off = 0;
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off);
        struct sockaddr_in6 any = {.sin6_family = AF_INET6, .sin6_port = htons(port),
                                   .sin6_addr = IN6ADDR_ANY_INIT};
        if (bind(fd, (struct sockaddr *)&any, sizeof any) < 0) {
            perror("vhn-udp: bind");
            return 1;
        }
    } else {
        fd = socket(AF_INET, SOCK_DGRAM, 0);
        struct sockaddr_in any = {.sin_family = AF_INET, .sin_port = htons(port),
                                  .sin_addr.s_addr = htonl(INADDR_ANY)};
        if (fd < 0 || bind(fd, (struct sockaddr *)&any, sizeof any) < 0) {
            perror("vhn-udp: bind");
            return 1;
        }
    }
    printf("listening on %d\n", port);
    fflush(stdout);
    int echoed = 0;
    while (count < 0 || echoed < count) {
        struct sockaddr_storage from;
        socklen_t fromlen = sizeof from;
        ssize_t n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &fromlen);
        if (n < 0) {
            perror("vhn-udp: recvfrom");
            return 1;
        }
        if (verbose)
            print_peer(&from, n);
        if (sendto(fd, buf, n, 0, (struct sockaddr *)&from, fromlen) < 0)
            perror("vhn-udp: sendto");
        echoed++;
    }
    printf("echoed %d datagrams\n", echoed);
    return 0;
}

int main(int argc, char **argv)
{
    int wait = 2, count = 1, size = -1, quiet = 0, listen_port = -1, limit = -1, verbose = 0;
    int opt;
    while ((opt = getopt(argc, argv, "w:n:s:ql:c:v")) != -1) {
        switch (opt) {
        case 'w': wait = atoi(optarg); break;
        case 'n': count = atoi(optarg); break;
        case 's': size = atoi(optarg); break;
        case 'q': quiet = 1; break;
        case 'l':
            if ((listen_port = port_arg(optarg)) < 0)
                return 2;
            break;
        case 'c': limit = atoi(optarg); break;
        case 'v': verbose = 1; break;
        default: fputs(usage, stderr); return 2;
        }
    }
    if (listen_port >= 0) {
        if (argc != optind) {
            fputs(usage, stderr);
            return 2;
        }
        return serve(listen_port, limit, verbose);
    }
    if (argc - optind != 2) {
        fputs(usage, stderr);
        return 2;
    }
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
    int port = port_arg(argv[optind + 1]);
    if (port < 0)
        return 2;
    struct sockaddr_storage to;
    socklen_t tolen = parse_addr(argv[optind], port, &to);
    if (tolen == 0) {
        fprintf(stderr, "vhn-udp: bad address %s\n", argv[optind]);
        return 2;
    }
    int fd = socket(to.ss_family, SOCK_DGRAM, 0);
    if (fd < 0) {
        perror("vhn-udp: socket");
        return 1;
    }
    struct timeval tv = {.tv_sec = wait};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&to, tolen) < 0) {
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
