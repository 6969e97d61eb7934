/* vhn-tftp: a TFTP client (read only) with the windowsize option, which busybox's tftp lacks.
 *
 *   vhn-tftp [-b BLKSIZE] [-w WINDOWSIZE] [-t TIMEOUT] [-o OUT] [-v] HOST FILE
 *
 * Sends an RRQ for FILE (octet) to HOST port 69 (an IPv4 or IPv6 address) with the options
 * given: blksize (RFC 2348) with -b, windowsize (RFC 7440) with -w, and timeout (RFC 2349)
 * with -t; without any, a plain RFC 1350 request. It follows the server's OACK: an option
 * the OACK leaves out falls back to the default (blksize 512, windowsize 1), and a reply
 * with DATA instead of an OACK means no options at all. An OACK holding an option or a value
 * we did not ask for is refused with ERROR 8 (RFC 2347).
 *
 * Receiving (RFC 7440 section 4): blocks are taken in order only. The last block received
 * in order is acknowledged when the window is complete (WINDOWSIZE blocks since the last
 * ACK), when the file ends (a block shorter than BLKSIZE), once when a block arrives out of
 * order (a gap: the sender starts its next window after the acknowledged block), once when
 * an old block arrives again (our ACK was lost and the sender went back), and when nothing
 * came for a short while (a quarter of TIMEOUT, at least 100 ms: the rest of a window was
 * lost). Block numbers roll over past 65535 to 0; the client counts blocks with 64 bits.
 * Datagrams from another port than the server's first reply (its TID) get ERROR 5.
 *
 * Writes the file to OUT (default /dev/null) and prints "BYTES bytes in SECONDS s" on
 * stdout; -v prints the options in force (and the OACK) on stderr. Exits 0 on success, 1 on
 * an ERROR from the server, a write error, or no progress for 5 x TIMEOUT (default 1 s, so
 * 5 s), 2 on bad arguments. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { RRQ = 1, DATA = 3, ACK = 4, ERROR = 5, OACK = 6 };
#define MAX_BLKSIZE 65464
#define TRIES 5

static const char usage[] =
    "usage: vhn-tftp [-b BLKSIZE] [-w WINDOWSIZE] [-t TIMEOUT] [-o OUT] [-v] HOST FILE\n";

static unsigned char pkt[MAX_BLKSIZE + 4 + 1];
static int sock, verbose;
static struct sockaddr_storage server; /* port 69, then the server's TID */
static socklen_t server_len;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static long number(const char *s, long lo, long hi, const char *what)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || errno || v < lo || v > hi) {
        fprintf(stderr, "vhn-tftp: bad %s %s (%ld..%ld)\n", what, s, lo, hi);
        exit(2);
    }
    return v;
}

static int send_to_server(const void *data, size_t len)
{
    if (sendto(sock, data, len, 0, (struct sockaddr *)&server, server_len) < 0) {
        perror("vhn-tftp: sendto");
        return -1;
    }
    return 0;
}

static int send_ack(uint64_t block)
{
    unsigned char ack[4] = {0, ACK, (block >> 8) & 0xff, block & 0xff};
    return send_to_server(ack, sizeof ack);
}

static void send_error(const struct sockaddr *to, socklen_t tolen, int code, const char *msg)
{
    unsigned char e[128] = {0, ERROR, 0, (unsigned char)code};
    size_t n = strlen(msg) + 1;
    if (n > sizeof e - 4)
        n = sizeof e - 4;
    memcpy(e + 4, msg, n);
    e[sizeof e - 1] = 0;
    sendto(sock, e, 4 + n, 0, to, tolen);
}

static int same_port(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return 0;
    if (a->ss_family == AF_INET)
        return ((const struct sockaddr_in *)a)->sin_port ==
               ((const struct sockaddr_in *)b)->sin_port;
    return ((const struct sockaddr_in6 *)a)->sin6_port ==
           ((const struct sockaddr_in6 *)b)->sin6_port;
}

static void set_port(struct sockaddr_storage *a, in_port_t port)
{
    if (a->ss_family == AF_INET)
        ((struct sockaddr_in *)a)->sin_port = port;
    else
        ((struct sockaddr_in6 *)a)->sin6_port = port;
}


/* Appends "name\0value\0" to the request at *len. */
static void add_option(unsigned char *req, size_t *len, const char *name, long value)
{
    *len += sprintf((char *)req + *len, "%s", name) + 1;
    *len += sprintf((char *)req + *len, "%ld", value) + 1;
}

/* Reads the OACK in pkt[2..n); sets *blksize and *window from it. 0, or -1 (refused). */
static int take_oack(ssize_t n, long ask_blk, long ask_win, long ask_timeout, long *blksize,
                     long *window)
{
    const char *p = (const char *)pkt + 2, *end = (const char *)pkt + n;
    *blksize = 512;
    *window = 1;
    if (verbose)
        fprintf(stderr, "vhn-tftp: OACK");
    while (p < end) {
        const char *name = p, *value = memchr(p, 0, end - p);
        if (value == NULL || ++value >= end)
            return -1;
        const char *stop = memchr(value, 0, end - value);
        if (stop == NULL)
            return -1;
        p = stop + 1;
        if (verbose)
            fprintf(stderr, " %s=%s", name, value);
        char *e;
        long v = strtol(value, &e, 10);
        if (*value == '\0' || *e != '\0')
            return -1;
        if (strcasecmp(name, "blksize") == 0) {
            if (ask_blk < 0 || v < 8 || v > ask_blk)
                return -1;
            *blksize = v;
        } else if (strcasecmp(name, "windowsize") == 0) {
            if (ask_win < 0 || v < 1 || v > ask_win)
                return -1;
            *window = v;
        } else if (strcasecmp(name, "timeout") == 0) {
            if (ask_timeout < 0 || v != ask_timeout)
                return -1;
        } else {
            return -1; /* tsize and anything else: we did not ask */
        }
    }
    if (verbose)
        fprintf(stderr, "\n");
    return 0;
}

int main(int argc, char **argv)
{
    long ask_blk = -1, ask_win = -1, ask_timeout = -1;
    const char *out = "/dev/null";
    int opt;
    while ((opt = getopt(argc, argv, "b:w:t:o:v")) != -1) {
        switch (opt) {
        case 'b': ask_blk = number(optarg, 8, MAX_BLKSIZE, "blksize"); break;
        case 'w': ask_win = number(optarg, 1, 65535, "windowsize"); break;
        case 't': ask_timeout = number(optarg, 1, 255, "timeout"); break;
        case 'o': out = optarg; break;
        case 'v': verbose = 1; break;
        default: fputs(usage, stderr); return 2;
        }
    }
    if (argc - optind != 2) {
        fputs(usage, stderr);
        return 2;
    }
    const char *host = argv[optind], *file = argv[optind + 1];
    memset(&server, 0, sizeof server);
    struct sockaddr_in *v4 = (struct sockaddr_in *)&server;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&server;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        server_len = sizeof *v4;
    } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        server_len = sizeof *v6;
    } else {
        fprintf(stderr, "vhn-tftp: bad address %s\n", host);
        return 2;
    }
    set_port(&server, htons(69));
    size_t flen = strlen(file);
    if (flen == 0 || flen > 400) {
        fprintf(stderr, "vhn-tftp: bad file name\n");
        return 2;
    }
    int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        perror(out);
        return 1;
    }
    sock = socket(server.ss_family, SOCK_DGRAM, 0);
    if (sock < 0) {
        perror("vhn-tftp: socket");
        return 1;
    }
    int rcvbuf = 4 << 20; /* a window of big blocks must not overflow it */
    setsockopt(sock, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);

    unsigned char req[512];
    size_t reqlen = 2;
    req[0] = 0;
    req[1] = RRQ;
    memcpy(req + reqlen, file, flen + 1);
    reqlen += flen + 1;
    memcpy(req + reqlen, "octet", 6);
    reqlen += 6;
    if (ask_blk >= 0)
        add_option(req, &reqlen, "blksize", ask_blk);
    if (ask_win >= 0)
        add_option(req, &reqlen, "windowsize", ask_win);
    if (ask_timeout >= 0)
        add_option(req, &reqlen, "timeout", ask_timeout);

    double timeout = ask_timeout > 0 ? ask_timeout : 1.0;
    double nudge = timeout / 4 < 0.1 ? 0.1 : timeout / 4; /* the short, no-progress ACK */
    long blksize = 512, window = 1;
    int have_tid = 0, options_done = 0, tries = 0, gap_acked = 0, dup_acked = 0;
    uint64_t next = 1;        /* the next block wanted */
    uint64_t acked = 0;       /* the last block acknowledged (0: the OACK, or none) */
    uint64_t bytes = 0;
    double t0 = now(), last_progress = t0, last_send = t0;
    if (send_to_server(req, reqlen) < 0)
        return 1;
    for (;;) {
        /* before the first reply: resend the request after TIMEOUT; then: the short ACK
         * after NUDGE with nothing received or sent */
        double since = now() - (last_progress > last_send ? last_progress : last_send);
        double wait = have_tid ? nudge - since : timeout - (now() - last_send);
        struct pollfd pfd = {.fd = sock, .events = POLLIN};
        int r = poll(&pfd, 1, wait > 0 ? (int)(wait * 1000) + 1 : 0);
        if (r < 0 && errno != EINTR) {
            perror("vhn-tftp: poll");
            return 1;
        }
        if (r <= 0) {
            if (have_tid && now() - last_progress > TRIES * timeout) {
                fprintf(stderr, "vhn-tftp: timed out after %llu bytes\n",
                        (unsigned long long)bytes);
                return 1;
            }
            if (!have_tid) { /* no answer to the request: ask again */
                if (now() - last_send >= timeout) {
                    if (++tries >= TRIES) {
                        fprintf(stderr, "vhn-tftp: no answer from %s\n", host);
                        return 1;
                    }
                    send_to_server(req, reqlen);
                    last_send = now();
                }
                continue;
            }
            /* nothing new for a while: acknowledge what we have, the sender resends after */
            send_ack(options_done ? next - 1 : 0);
            last_send = now();
            continue;
        }
        struct sockaddr_storage from;
        socklen_t fromlen = sizeof from;
        ssize_t n = recvfrom(sock, pkt, sizeof pkt - 1, 0, (struct sockaddr *)&from, &fromlen);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            perror("vhn-tftp: recvfrom");
            return 1;
        }
        int op = n >= 2 ? pkt[0] << 8 | pkt[1] : 0;
        if (n < (op == OACK ? 2 : 4)) /* (atftpd granting none of the options: a bare OACK) */
            continue;
        if (!have_tid) {
            server = from;
            server_len = fromlen;
            have_tid = 1;
        } else if (!same_port(&from, &server)) {
            send_error((struct sockaddr *)&from, fromlen, 5, "Unknown transfer ID");
            continue;
        }
        if (op == ERROR) {
            pkt[n] = 0;
            fprintf(stderr, "vhn-tftp: server error %d: %s\n", pkt[2] << 8 | pkt[3],
                    (char *)pkt + 4);
            return 1;
        }
        if (op == OACK) {
            if (options_done) {
                if (next == 1) /* the OACK again: our ACK 0 got lost */
                    send_ack(0);
                continue;
            }
            if ((ask_blk < 0 && ask_win < 0 && ask_timeout < 0) ||
                take_oack(n, ask_blk, ask_win, ask_timeout, &blksize, &window) < 0) {
                if (verbose)
                    fprintf(stderr, " (refused)\n");
                send_error((struct sockaddr *)&server, server_len, 8, "bad options");
                fprintf(stderr, "vhn-tftp: the server's OACK is not what we asked for\n");
                return 1;
            }
            options_done = 1;
            send_ack(0);
            acked = 0;
            last_send = last_progress = now();
            continue;
        }
        if (op != DATA)
            continue;
        if (!options_done) { /* DATA 1 straight away: no options */
            options_done = 1;
            blksize = 512;
            window = 1;
            if (verbose)
                fprintf(stderr, "vhn-tftp: no OACK\n");
        }
        ssize_t len = n - 4;
        if (len > blksize) {
            fprintf(stderr, "vhn-tftp: a block of %zd bytes (blksize %ld)\n", len, blksize);
            return 1;
        }
        uint16_t wire = pkt[2] << 8 | pkt[3];
        uint16_t diff = (uint16_t)(wire - (uint16_t)next);
        if (diff != 0) {
            if (diff < 0x8000) { /* ahead of what we want: something was lost */
                if (!gap_acked) {
                    send_ack(next - 1);
                    acked = next - 1;
                    last_send = now();
                    gap_acked = 1;
                }
            } else if (!dup_acked) { /* an old block again: the sender did not hear us */
                send_ack(next - 1);
                acked = next - 1;
                last_send = now();
                dup_acked = 1;
            }
            continue;
        }
        for (ssize_t off = 0; off < len;) {
            ssize_t w = write(fd, pkt + 4 + off, len - off);
            if (w < 0) {
                perror(out);
                send_error((struct sockaddr *)&server, server_len, 3, "write failed");
                return 1;
            }
            off += w;
        }
        bytes += len;
        gap_acked = dup_acked = 0;
        last_progress = now();
        if (len < blksize) { /* the last block */
            send_ack(next);
            break;
        }
        if (next - acked >= (uint64_t)window) {
            send_ack(next);
            acked = next;
            last_send = now();
        }
        next++;
    }
    double dt = now() - t0;
    if (close(fd) < 0) {
        perror(out);
        return 1;
    }
    if (verbose)
        fprintf(stderr, "vhn-tftp: blksize %ld, windowsize %ld, %llu blocks\n", blksize, window,
                (unsigned long long)next);
    printf("%llu bytes in %.3f s\n", (unsigned long long)bytes, dt);
    return 0;
}
