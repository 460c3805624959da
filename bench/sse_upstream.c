/* A streaming upstream for the slow-stream benchmark that keeps to its schedule.
 *
 * nginx's echo module sleeps N ms after each write, so a busy nginx's lateness adds up over a
 * stream (100 chunks at 20 ms took 2.5-2.7 s with 500 streams, not 2.0 s): the baseline itself
 * missed the ideal. Here chunk k of a stream is due at start + k x delay, like tokens that a model
 * produces at its own pace whatever the network does, so lateness never accumulates and the
 * direct path's duration stays at the ideal plus the lateness of one event.
 *
 * One thread, epoll, a timerfd armed at the earliest due event, a binary heap of due events.
 * Answers any request (HTTP/1.1 keep-alive, Content-Length bodies) with text/event-stream in
 * chunked encoding: `chunks` copies of CONTENT, each its own write when due, then TAIL at once.
 * The delay comes from the request's x-mock-delay-ms header (0 means 1 ms), else DEFAULT_MS.
 *
 *   sse_upstream PORT CHUNKS DEFAULT_MS CONTENT TAIL     (CONTENT and TAIL: the SSE bytes)
 *
 * Built and started by bench/harness.py (start_sse_upstream), pinned to the load CPU.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define MAX_FD 65536
#define INBUF 16384

typedef struct {
    int open, streaming;
    unsigned gen;
    char in[INBUF];
    size_t inlen;
    int sent, chunks;
    int64_t start_ns, delay_ns;
    char *out;            /* bytes the socket did not take yet */
    size_t outlen, outcap;
} Conn;

typedef struct { int64_t due; int fd; unsigned gen; } Due;

static Conn *conns;
static Due *heap;
static size_t heap_len, heap_cap;
static int ep, tfd, chunks_per_stream;
static double default_ms;
static char *content_frame, *tail_frame, *last_frame;
static size_t content_len, tail_len, last_len;
static const char HEAD[] =
    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    "Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n";

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void heap_push(Due d) {
    if (heap_len == heap_cap) {
        heap_cap = heap_cap ? heap_cap * 2 : 1024;
        heap = realloc(heap, heap_cap * sizeof *heap);
        if (!heap) abort();
    }
    size_t i = heap_len++;
    while (i && heap[(i - 1) / 2].due > d.due) {
        heap[i] = heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    heap[i] = d;
}

static Due heap_pop(void) {
    Due top = heap[0], last = heap[--heap_len];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= heap_len) break;
        if (c + 1 < heap_len && heap[c + 1].due < heap[c].due) c++;
        if (last.due <= heap[c].due) break;
        heap[i] = heap[c];
        i = c;
    }
    if (heap_len) heap[i] = last;
    return top;
}

static void arm_timer(void) {
    struct itimerspec it = {0};
    if (heap_len) {
        int64_t due = heap[0].due;
        if (due <= 0) due = 1;
        it.it_value.tv_sec = due / 1000000000;
        it.it_value.tv_nsec = due % 1000000000;
    }
    timerfd_settime(tfd, TFD_TIMER_ABSTIME, &it, NULL);
}

static void drop(int fd) {
    Conn *c = &conns[fd];
    c->open = 0;
    c->gen++;
    free(c->out);
    c->out = NULL;
    c->outlen = c->outcap = 0;
    close(fd);
}

/* Write now what the socket takes; keep the rest and wait for EPOLLOUT. 0 = the connection is gone. */
static int put(int fd, const char *p, size_t n) {
    Conn *c = &conns[fd];
    if (c->outlen == 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno != EAGAIN) return 0;
        if (w > 0) { p += w; n -= (size_t)w; }
        if (n == 0) return 1;
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.fd = fd};
        epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
    }
    if (c->outlen + n > c->outcap) {
        c->outcap = (c->outlen + n) * 2;
        c->out = realloc(c->out, c->outcap);
        if (!c->out) abort();
    }
    memcpy(c->out + c->outlen, p, n);
    c->outlen += n;
    return 1;
}

static void flush_out(int fd) {
    Conn *c = &conns[fd];
    ssize_t w = write(fd, c->out, c->outlen);
    if (w < 0) {
        if (errno != EAGAIN) drop(fd);
        return;
    }
    memmove(c->out, c->out + w, c->outlen - (size_t)w);
    c->outlen -= (size_t)w;
    if (c->outlen == 0) {
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
        epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
    }
}

static const char *find_header(const char *head, size_t len, const char *name) {
    size_t n = strlen(name);
    for (const char *p = head; p && p < head + len; p = memchr(p, '\n', (size_t)(head + len - p))) {
        if (*p == '\n') p++;
        if ((size_t)(head + len - p) > n && strncasecmp(p, name, n) == 0 && p[n] == ':') return p + n + 1;
    }
    return NULL;
}

/* Start a stream for each whole request in the buffer (one at a time: a stream must end first). */
static void on_request_bytes(int fd) {
    Conn *c = &conns[fd];
    while (!c->streaming && c->open) {
        char *end = memmem(c->in, c->inlen, "\r\n\r\n", 4);
        if (!end) {
            if (c->inlen == INBUF) drop(fd); /* headers too large for a benchmark */
            return;
        }
        size_t head = (size_t)(end - c->in) + 4, body = 0;
        const char *v = find_header(c->in, head, "content-length");
        if (v) body = strtoul(v, NULL, 10);
        if (head + body > INBUF) { drop(fd); return; }
        if (c->inlen < head + body) return;
        double ms = default_ms;
        if ((v = find_header(c->in, head, "x-mock-delay-ms"))) ms = strtod(v, NULL);
        if (ms < 1.0) ms = 1.0;
        memmove(c->in, c->in + head + body, c->inlen - head - body);
        c->inlen -= head + body;
        c->streaming = 1;
        c->sent = 0;
        c->chunks = chunks_per_stream;
        c->start_ns = now_ns();
        c->delay_ns = (int64_t)(ms * 1e6);
        if (!put(fd, HEAD, sizeof HEAD - 1)) { drop(fd); return; }
        heap_push((Due){c->start_ns + c->delay_ns, fd, c->gen});
    }
}

static void on_due(Due d) {
    Conn *c = &conns[d.fd];
    if (!c->open || c->gen != d.gen || !c->streaming) return;
    c->sent++;
    int ok;
    if (c->sent < c->chunks) {
        ok = put(d.fd, content_frame, content_len);
        heap_push((Due){c->start_ns + (int64_t)(c->sent + 1) * c->delay_ns, d.fd, d.gen});
    } else {
        ok = put(d.fd, last_frame, last_len);
        c->streaming = 0;
    }
    if (!ok) { drop(d.fd); return; }
    if (!c->streaming) on_request_bytes(d.fd);
}

static char *frame(const char *data, size_t *len) {
    size_t n = strlen(data);
    char *f = malloc(n + 32);
    if (!f) abort();
    *len = (size_t)sprintf(f, "%zx\r\n", n);
    memcpy(f + *len, data, n);
    *len += n;
    memcpy(f + *len, "\r\n", 2);
    *len += 2;
    return f;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s PORT CHUNKS DEFAULT_MS CONTENT TAIL\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    int port = atoi(argv[1]);
    chunks_per_stream = atoi(argv[2]);
    default_ms = atof(argv[3]);
    if (chunks_per_stream < 1) return 2;
    content_frame = frame(argv[4], &content_len);
    tail_frame = frame(argv[5], &tail_len);
    /* The last content event, the tail and the end of the chunked body go out in one write. */
    last_len = content_len + tail_len + 5;
    last_frame = malloc(last_len);
    if (!last_frame) abort();
    memcpy(last_frame, content_frame, content_len);
    memcpy(last_frame + content_len, tail_frame, tail_len);
    memcpy(last_frame + content_len + tail_len, "0\r\n\r\n", 5);
    conns = calloc(MAX_FD, sizeof *conns);
    if (!conns) abort();

    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(ls, (struct sockaddr *)&addr, sizeof addr) || listen(ls, 8192)) {
        perror("bind/listen");
        return 1;
    }
    ep = epoll_create1(0);
    tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    ev.data.fd = tfd;
    epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev);
    struct epoll_event evs[512];
    for (;;) {
        int n = epoll_wait(ep, evs, 512, -1);
        if (n < 0 && errno != EINTR) { perror("epoll_wait"); return 1; }
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == ls) {
                int cfd;
                while ((cfd = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    if (cfd >= MAX_FD) { close(cfd); continue; }
                    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    Conn *c = &conns[cfd];
                    unsigned gen = c->gen + 1;
                    memset(c, 0, sizeof *c);
                    c->open = 1;
                    c->gen = gen;
                    struct epoll_event cev = {.events = EPOLLIN, .data.fd = cfd};
                    epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &cev);
                }
            } else if (fd == tfd) {
                uint64_t expirations;
                if (read(tfd, &expirations, sizeof expirations) < 0 && errno != EAGAIN) return 1;
            } else {
                Conn *c = &conns[fd];
                if (!c->open) continue;
                if (evs[i].events & EPOLLOUT) flush_out(fd);
                if (!c->open) continue;
                if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                    ssize_t r = read(fd, c->in + c->inlen, INBUF - c->inlen);
                    if (r == 0 || (r < 0 && errno != EAGAIN)) { drop(fd); continue; }
                    if (r > 0) { c->inlen += (size_t)r; on_request_bytes(fd); }
                }
            }
        }
        int64_t t = now_ns();
        while (heap_len && heap[0].due <= t) on_due(heap_pop());
        arm_timer();
    }
}
