/*
 * noop_milter: the floor every libmilter milter pays (benchmark only).
 *
 * It inserts one header at end of message and does nothing else. Everything
 * it can skip is skipped through negotiation (connect, HELO, MAIL, RCPT,
 * headers, end of headers, body, unknown commands), and the two 40 ms
 * Nagle/delayed-ACK stalls a naive libmilter milter pays on TCP are avoided
 * the same way tlspolicyd avoids them (see "Milter speed" in
 * /work/shared/docs/postfix-facts.md and milter/milter.cpp):
 *   1. an xxfi_data callback is registered and DATA is not skipped, so the
 *      DATA-stage macro packet Postfix sends is answered at once;
 *   2. TCP_NODELAY is set on libmilter's listening socket (found by scanning
 *      fds for a listener with our address, as libmilter does not expose
 *      it); Linux copies it to the accepted sockets, so the header change
 *      and the final reply are not held back as two small packets.
 *
 * Usage: noop_milter [-N] CONN [COUNTFILE]
 *   -N         naive: neither fix (DATA skipped, no TCP_NODELAY), to show
 *              the stalls the fixes avoid (bench/milter.sh NAIVE=1)
 *   -p HEX     protocol shape (diagnosis): negotiate exactly these SMFIP_*
 *              protocol flags (masked by what the MTA offers) instead of
 *              skipping everything, with a do-nothing callback for every
 *              stage that replies, or not if SMFIP_NR_* says so. E.g.
 *              -p 0x4b192 (NOHELO|NOBODY|NR_HDR|NOUNKNOWN|NR_CONN|
 *              NR_HELO|NR_RCPT|NR_EOH) is tlspolicyd's shape on the
 *              benchmark's policy (a reply at MAIL, none at RCPT).
 *   CONN       libmilter syntax: inet:PORT@127.0.0.1 or unix:/path/sock
 *   COUNTFILE  if given, the number of messages seen so far is written to it
 *              at each end of message (one pwrite of a fixed-width number),
 *              so a benchmark can check Postfix really uses this milter.
 * A unix socket is made mode 0666 (Postfix's smtpd runs as postfix).
 * Stop it with SIGTERM/SIGINT: smfi_main handles those itself.
 *
 * Build: cc -O2 -o noop_milter noop_milter.c -lmilter -lpthread
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <libmilter/mfapi.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static int count_fd = -1;
static int naive;
static long shape = -1;        /* -p: protocol flags asked for */
static unsigned long proto;    /* the negotiated ones (same on every connection) */
static unsigned long count;
static pthread_mutex_t count_lock = PTHREAD_MUTEX_INITIALIZER;

static sfsistat on_negotiate(SMFICTX *ctx, unsigned long f0, unsigned long f1, unsigned long f2,
                             unsigned long f3, unsigned long *pf0, unsigned long *pf1,
                             unsigned long *pf2, unsigned long *pf3)
{
    (void)ctx;
    (void)f2;
    (void)f3;
    if (!(f0 & SMFIF_ADDHDRS))
        return SMFIS_REJECT;
    *pf0 = SMFIF_ADDHDRS;
    /* Skip every stage but DATA and end of message. DATA is kept on
     * purpose (and answered): skipping it leaves Postfix's DATA macro packet
     * unanswered and costs a delayed-ACK stall. */
    *pf1 = f1 & (SMFIP_NOCONNECT | SMFIP_NOHELO | SMFIP_NOMAIL | SMFIP_NORCPT | SMFIP_NOBODY |
                 SMFIP_NOHDRS | SMFIP_NOEOH | SMFIP_NOUNKNOWN | (naive ? SMFIP_NODATA : 0));
    if (shape >= 0)
        *pf1 = f1 & (unsigned long)shape;
    proto = *pf1;
    *pf2 = 0;
    *pf3 = 0;
    return SMFIS_CONTINUE;
}

static sfsistat reply(unsigned long nr_flag)
{
    return (proto & nr_flag) ? SMFIS_NOREPLY : SMFIS_CONTINUE;
}

static sfsistat on_data(SMFICTX *ctx)
{
    (void)ctx;
    return reply(SMFIP_NR_DATA);
}

/* Only with -p: */
static sfsistat on_connect(SMFICTX *ctx, char *host, _SOCK_ADDR *sa)
{
    (void)ctx, (void)host, (void)sa;
    return reply(SMFIP_NR_CONN);
}
static sfsistat on_helo(SMFICTX *ctx, char *helo)
{
    (void)ctx, (void)helo;
    return reply(SMFIP_NR_HELO);
}
static sfsistat on_envfrom(SMFICTX *ctx, char **argv)
{
    (void)ctx, (void)argv;
    return reply(SMFIP_NR_MAIL);
}
static sfsistat on_envrcpt(SMFICTX *ctx, char **argv)
{
    (void)ctx, (void)argv;
    return reply(SMFIP_NR_RCPT);
}
static sfsistat on_header(SMFICTX *ctx, char *name, char *value)
{
    (void)ctx, (void)name, (void)value;
    return reply(SMFIP_NR_HDR);
}
static sfsistat on_eoh(SMFICTX *ctx)
{
    (void)ctx;
    return reply(SMFIP_NR_EOH);
}
static sfsistat on_body(SMFICTX *ctx, unsigned char *b, size_t n)
{
    (void)ctx, (void)b, (void)n;
    return reply(SMFIP_NR_BODY);
}

static sfsistat on_eom(SMFICTX *ctx)
{
    smfi_insheader(ctx, 0, "X-Noop-Milter", "1");
    if (count_fd >= 0) {
        char buf[24];
        pthread_mutex_lock(&count_lock); /* so the file never goes back */
        int len = snprintf(buf, sizeof buf, "%020lu\n", ++count);
        if (pwrite(count_fd, buf, (size_t)len, 0) < 0) {
            /* counting is best effort */
        }
        pthread_mutex_unlock(&count_lock);
    }
    return SMFIS_CONTINUE;
}

static struct smfiDesc desc = {
    "noop_milter",
    SMFI_VERSION,
    SMFIF_ADDHDRS,
    NULL,     /* connect */
    NULL,     /* helo */
    NULL,     /* envfrom */
    NULL,     /* envrcpt */
    NULL,     /* header */
    NULL,     /* eoh */
    NULL,     /* body */
    on_eom,   /* eom */
    NULL,     /* abort */
    NULL,     /* close */
    NULL,     /* unknown */
    on_data,  /* data */
    on_negotiate,
};

/* libmilter keeps its listening fd to itself: find it by address. */
static int find_listener(const char *conn)
{
    int is_unix = strncmp(conn, "unix:", 5) == 0 || strncmp(conn, "local:", 6) == 0;
    const char *path = is_unix ? strchr(conn, ':') + 1 : NULL;
    int port = 0;
    if (!is_unix) {
        const char *p = strchr(conn, ':');
        port = p ? atoi(p + 1) : 0;
    }
    for (int fd = 0; fd < 4096; fd++) {
        int listening = 0;
        socklen_t len = sizeof listening;
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) < 0 || !listening)
            continue;
        memset(&ss, 0, sizeof ss);
        if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0)
            continue;
        if (is_unix && ss.ss_family == AF_UNIX && strcmp(((struct sockaddr_un *)&ss)->sun_path, path) == 0)
            return fd;
        if (!is_unix && ss.ss_family == AF_INET && ntohs(((struct sockaddr_in *)&ss)->sin_port) == port)
            return fd;
        if (!is_unix && ss.ss_family == AF_INET6 && ntohs(((struct sockaddr_in6 *)&ss)->sin6_port) == port)
            return fd;
    }
    return -1;
}

int main(int argc, char **argv)
{
    for (;;) {
        if (argc > 1 && strcmp(argv[1], "-N") == 0) {
            naive = 1;
            argv++;
            argc--;
        } else if (argc > 2 && strcmp(argv[1], "-p") == 0) {
            shape = strtol(argv[2], NULL, 0);
            argv += 2;
            argc -= 2;
        } else {
            break;
        }
    }
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: noop_milter [-N] [-p HEX] inet:PORT@127.0.0.1|unix:/path [COUNTFILE]\n");
        return 2;
    }
    const char *conn = argv[1];
    if (argc == 3) {
        count_fd = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (count_fd < 0) {
            perror(argv[2]);
            return 1;
        }
        if (write(count_fd, "00000000000000000000\n", 21) != 21)
            perror(argv[2]);
    }
    if (naive)
        desc.xxfi_data = NULL;
    if (shape >= 0) {
        desc.xxfi_connect = on_connect;
        desc.xxfi_helo = on_helo;
        desc.xxfi_envfrom = on_envfrom;
        desc.xxfi_envrcpt = on_envrcpt;
        desc.xxfi_header = on_header;
        desc.xxfi_eoh = on_eoh;
        desc.xxfi_body = on_body;
    }
    if (smfi_register(desc) != MI_SUCCESS || smfi_setconn((char *)conn) != MI_SUCCESS) {
        fprintf(stderr, "noop_milter: smfi_register/smfi_setconn failed\n");
        return 1;
    }
    if (smfi_opensocket(1) != MI_SUCCESS) {
        fprintf(stderr, "noop_milter: cannot open %s\n", conn);
        return 1;
    }
    int fd = find_listener(conn);
    if (fd < 0) {
        fprintf(stderr, "noop_milter: listening socket for %s not found\n", conn);
        return 1;
    }
    if (strncmp(conn, "inet", 4) == 0) {
        if (!naive) {
            int one = 1;
            if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0) {
                perror("setsockopt TCP_NODELAY");
                return 1;
            }
        }
    } else if (chmod(strchr(conn, ':') + 1, 0666) < 0) {
        perror("chmod");
        return 1;
    }
    fprintf(stderr, "noop_milter: listening on %s (fd %d)%s", conn, fd, naive ? " (naive)" : "");
    if (shape >= 0)
        fprintf(stderr, " (protocol shape 0x%lx)", (unsigned long)shape);
    fputc('\n', stderr);
    return smfi_main() == MI_SUCCESS ? 0 : 1;
}
