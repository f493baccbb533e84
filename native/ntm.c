/*
 * ntm.c — the kernel layer's N-API addon: TUN open, dual-stack UDP sockets, batched non-blocking
 * packet I/O (read/write on TUN, recvmmsg/sendmmsg on UDP), uv_poll readiness callbacks, and a raw
 * netlink socket for rtnetlink requests and events (the messages themselves are built in
 * netlink/rtnetlink.ts). Everything policy-like lives in TypeScript; this file only does what Node
 * has no API for.
 *
 * Why our own instead of an npm TUN binding (tuntap2 and the like): those are C++ addons that hand
 * out one Buffer and one stream event per packet; the engine needs batched, non-blocking I/O into
 * preallocated buffers with no thread and no promise per packet. Plain C against node_api.h + uv.h
 * so it cross-compiles in the OpenWrt SDK (glibc or musl, either endianness).
 *
 * Endpoint format (shared with protocol/endpoint.ts): 28 bytes in sockaddr_in6 layout, family
 * AF_INET6 as little-endian u16 at 0, port big-endian at 2, flowinfo (raw) at 4, address at 8,
 * scope id little-endian u32 at 24; IPv4 is v4-mapped (::ffff:a.b.c.d). The layout is written
 * byte by byte, so it is the same on big-endian routers.
 */
#include <node_api.h>
#include <uv.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <linux/netlink.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef SOL_NETLINK
#define SOL_NETLINK 270
#endif

#define EP_SIZE 28
#define CHUNK 64 /* messages per recvmmsg/sendmmsg call */
#define SOCK_BUF (4 << 20)

/* ---- errors ------------------------------------------------------------------------------ */

static const char *errno_name(int e) {
  switch (e) {
#define E(x) case x: return #x;
    E(EPERM) E(ENOENT) E(ESRCH) E(EINTR) E(EIO) E(ENXIO) E(E2BIG) E(EBADF) E(EAGAIN) E(ENOMEM)
    E(EACCES) E(EFAULT) E(EBUSY) E(EEXIST) E(ENODEV) E(ENOTDIR) E(EISDIR) E(EINVAL) E(ENFILE)
    E(EMFILE) E(ENOTTY) E(ENOSPC) E(EPIPE) E(ERANGE) E(ENAMETOOLONG) E(ENOSYS) E(ENOTSOCK)
    E(EDESTADDRREQ) E(EMSGSIZE) E(EPROTOTYPE) E(ENOPROTOOPT) E(EPROTONOSUPPORT) E(EOPNOTSUPP)
    E(EAFNOSUPPORT) E(EADDRINUSE) E(EADDRNOTAVAIL) E(ENETDOWN) E(ENETUNREACH) E(ECONNRESET)
    E(ENOBUFS) E(EISCONN) E(ENOTCONN) E(ETIMEDOUT) E(ECONNREFUSED) E(EHOSTUNREACH) E(EALREADY)
    E(EINPROGRESS) E(ESOCKTNOSUPPORT) E(EPFNOSUPPORT)
#undef E
  }
  return NULL;
}

/* Throws Error("<what>: <ENAME>") with .code = ENAME and .errno = err; returns NULL for `return`. */
static napi_value throw_errno(napi_env env, int err, const char *fmt, ...) {
  char what[192], msg[256], code[32];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  const char *name = errno_name(err);
  if (name == NULL) {
    snprintf(code, sizeof code, "E%d", err);
    name = code;
  }
  snprintf(msg, sizeof msg, "%s: %s", what, name);
  napi_value m, c, error, num;
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &m);
  napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &c);
  napi_create_error(env, c, m, &error);
  napi_create_int32(env, err, &num);
  napi_set_named_property(env, error, "errno", num);
  napi_throw(env, error);
  return NULL;
}

static napi_value throw_type(napi_env env, const char *msg) {
  napi_throw_type_error(env, NULL, msg);
  return NULL;
}

static napi_value throw_range(napi_env env, const char *msg) {
  napi_throw_range_error(env, NULL, msg);
  return NULL;
}

/* ---- argument helpers (return 0 after throwing) ------------------------------------------ */

static int args(napi_env env, napi_callback_info info, size_t n, napi_value *argv) {
  size_t argc = n;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < n) {
    char m[64];
    snprintf(m, sizeof m, "expected %zu arguments", n);
    throw_type(env, m);
    return 0;
  }
  return 1;
}

static int arg_i32(napi_env env, napi_value v, int32_t *out, const char *what) {
  if (napi_get_value_int32(env, v, out) != napi_ok) {
    char m[64];
    snprintf(m, sizeof m, "%s must be a number", what);
    throw_type(env, m);
    return 0;
  }
  return 1;
}

static int arg_buf(napi_env env, napi_value v, uint8_t **data, size_t *len, const char *what) {
  bool ok = false;
  napi_is_buffer(env, v, &ok);
  if (!ok || napi_get_buffer_info(env, v, (void **)data, len) != napi_ok) {
    char m[64];
    snprintf(m, sizeof m, "%s must be a Buffer", what);
    throw_type(env, m);
    return 0;
  }
  return 1;
}

static int arg_lengths(napi_env env, napi_value v, int32_t **data, size_t *len) {
  bool ok = false;
  napi_typedarray_type type;
  void *p;
  napi_is_typedarray(env, v, &ok);
  if (!ok || napi_get_typedarray_info(env, v, &type, len, &p, NULL, NULL) != napi_ok ||
      type != napi_int32_array) {
    throw_type(env, "lengths must be an Int32Array");
    return 0;
  }
  *data = p;
  return 1;
}

static int arg_str(napi_env env, napi_value v, char *out, size_t size, const char *what) {
  size_t len = 0;
  char m[64];
  if (napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok) {
    snprintf(m, sizeof m, "%s must be a string", what);
    throw_type(env, m);
    return 0;
  }
  if (len >= size) {
    snprintf(m, sizeof m, "%s is too long", what);
    throw_range(env, m);
    return 0;
  }
  napi_get_value_string_utf8(env, v, out, size, &len);
  return 1;
}

static napi_value num(napi_env env, int32_t n) {
  napi_value v;
  napi_create_int32(env, n, &v);
  return v;
}

/* Checks that `count` slots of `slot` bytes fit in buf and lengths (and addrs, if given). */
static int check_slots(napi_env env, int32_t slot, int32_t count, size_t buflen, size_t nlens,
                       size_t addrlen, int with_addrs) {
  if (slot <= 0 || count < 0 || (size_t)count > nlens || (size_t)count * (size_t)slot > buflen ||
      (with_addrs && (size_t)count * EP_SIZE > addrlen)) {
    throw_range(env, "batch arguments out of range (slotSize, count, buffer, lengths or addrs)");
    return 0;
  }
  return 1;
}

/* ---- endpoints --------------------------------------------------------------------------- */

static const uint8_t V4MAPPED[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

static void ep_from_sa(const struct sockaddr_storage *ss, uint8_t *out) {
  memset(out, 0, EP_SIZE);
  if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *s = (const struct sockaddr_in *)ss;
    memcpy(out + 2, &s->sin_port, 2);
    memcpy(out + 8, V4MAPPED, 12);
    memcpy(out + 20, &s->sin_addr, 4);
  } else if (ss->ss_family == AF_INET6) {
    const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)ss;
    uint32_t scope = s->sin6_scope_id;
    memcpy(out + 2, &s->sin6_port, 2);
    memcpy(out + 4, &s->sin6_flowinfo, 4);
    memcpy(out + 8, &s->sin6_addr, 16);
    out[24] = scope & 0xff, out[25] = (scope >> 8) & 0xff;
    out[26] = (scope >> 16) & 0xff, out[27] = scope >> 24;
  } else {
    return; /* family 0: unknown source */
  }
  out[0] = AF_INET6 & 0xff, out[1] = AF_INET6 >> 8;
}

/* For a socket of `domain`; returns the sockaddr length, 0 if the endpoint is unusable there. */
static socklen_t ep_to_sa(const uint8_t *in, int domain, struct sockaddr_storage *ss) {
  if ((in[0] | (in[1] << 8)) != AF_INET6) return 0;
  memset(ss, 0, sizeof *ss);
  if (domain == AF_INET) {
    struct sockaddr_in *s = (struct sockaddr_in *)ss;
    if (memcmp(in + 8, V4MAPPED, 12) != 0) return 0;
    s->sin_family = AF_INET;
    memcpy(&s->sin_port, in + 2, 2);
    memcpy(&s->sin_addr, in + 20, 4);
    return sizeof *s;
  }
  struct sockaddr_in6 *s = (struct sockaddr_in6 *)ss;
  s->sin6_family = AF_INET6;
  memcpy(&s->sin6_port, in + 2, 2);
  memcpy(&s->sin6_flowinfo, in + 4, 4);
  memcpy(&s->sin6_addr, in + 8, 16);
  s->sin6_scope_id = in[24] | (in[25] << 8) | (in[26] << 16) | ((uint32_t)in[27] << 24);
  return sizeof *s;
}

/* ---- TUN --------------------------------------------------------------------------------- */

/* tunOpen(name) -> { fd, name }   (name '' or 'tun%d' lets the kernel pick) */
static napi_value tun_open(napi_env env, napi_callback_info info) {
  napi_value argv[1], obj;
  char name[IFNAMSIZ];
  if (!args(env, info, 1, argv) || !arg_str(env, argv[0], name, sizeof name, "name")) return NULL;
  int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return throw_errno(env, errno, "open /dev/net/tun");
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
  memcpy(ifr.ifr_name, name, strlen(name));
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
    int e = errno;
    close(fd);
    return throw_errno(env, e, "TUNSETIFF %s", name);
  }
  napi_value vname;
  napi_create_object(env, &obj);
  napi_create_string_utf8(env, ifr.ifr_name, strnlen(ifr.ifr_name, IFNAMSIZ), &vname);
  napi_set_named_property(env, obj, "fd", num(env, fd));
  napi_set_named_property(env, obj, "name", vname);
  return obj;
}

/* readBatch(fd, buf, slotSize, maxCount, lengths) -> count (0 when nothing is waiting) */
static napi_value read_batch(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  int32_t fd, slot, max, *lens;
  uint8_t *buf;
  size_t blen, nlens;
  if (!args(env, info, 5, argv) || !arg_i32(env, argv[0], &fd, "fd") ||
      !arg_buf(env, argv[1], &buf, &blen, "buf") || !arg_i32(env, argv[2], &slot, "slotSize") ||
      !arg_i32(env, argv[3], &max, "maxCount") || !arg_lengths(env, argv[4], &lens, &nlens) ||
      !check_slots(env, slot, max, blen, nlens, 0, 0))
    return NULL;
  int32_t n = 0;
  while (n < max) {
    ssize_t r = read(fd, buf + (size_t)n * slot, slot);
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || n > 0) break; /* a real error surfaces on the next call */
      return throw_errno(env, errno, "read fd %d", fd);
    }
    lens[n++] = (int32_t)r;
  }
  return num(env, n);
}

/* writeBatch(fd, buf, slotSize, lengths, count) -> packets written; never throws per packet */
static napi_value write_batch(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  int32_t fd, slot, count, *lens;
  uint8_t *buf;
  size_t blen, nlens;
  if (!args(env, info, 5, argv) || !arg_i32(env, argv[0], &fd, "fd") ||
      !arg_buf(env, argv[1], &buf, &blen, "buf") || !arg_i32(env, argv[2], &slot, "slotSize") ||
      !arg_lengths(env, argv[3], &lens, &nlens) || !arg_i32(env, argv[4], &count, "count") ||
      !check_slots(env, slot, count, blen, nlens, 0, 0))
    return NULL;
  int32_t written = 0;
  for (int32_t i = 0; i < count; i++) {
    if (lens[i] < 0 || (size_t)lens[i] > (size_t)slot) continue;
    ssize_t r;
    do r = write(fd, buf + (size_t)i * slot, lens[i]);
    while (r < 0 && errno == EINTR);
    if (r >= 0) written++;
    else if (errno == EAGAIN || errno == ENOBUFS) break; /* full: drop the rest */
    /* other errors (EINVAL for a malformed packet, EIO when down): drop this one */
  }
  return num(env, written);
}

/* ---- UDP --------------------------------------------------------------------------------- */

static void set_buf(int fd, int force, int plain) {
  int size = SOCK_BUF;
  if (setsockopt(fd, SOL_SOCKET, force, &size, sizeof size) < 0)
    setsockopt(fd, SOL_SOCKET, plain, &size, sizeof size);
}

/* udpOpen(bindAddress, port) -> { fd, port }; '::' or IPv6 = dual-stack AF_INET6, IPv4 = AF_INET */
static napi_value udp_open(napi_env env, napi_callback_info info) {
  napi_value argv[2], obj;
  char addr[INET6_ADDRSTRLEN + 1];
  int32_t port;
  if (!args(env, info, 2, argv) || !arg_str(env, argv[0], addr, sizeof addr, "bindAddress") ||
      !arg_i32(env, argv[1], &port, "port"))
    return NULL;
  if (port < 0 || port > 65535) return throw_range(env, "port must be 0..65535");
  struct sockaddr_storage ss;
  socklen_t sl;
  memset(&ss, 0, sizeof ss);
  struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
  struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
  if (inet_pton(AF_INET6, addr, &s6->sin6_addr) == 1) {
    s6->sin6_family = AF_INET6, s6->sin6_port = htons(port), sl = sizeof *s6;
  } else if (inet_pton(AF_INET, addr, &s4->sin_addr) == 1) {
    s4->sin_family = AF_INET, s4->sin_port = htons(port), sl = sizeof *s4;
  } else {
    return throw_errno(env, EINVAL, "udpOpen %s", addr);
  }
  const char *fmt = ss.ss_family == AF_INET6 ? "bind [%s]:%d" : "bind %s:%d";
  int fd = socket(ss.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, errno, "socket %s", addr);
  int off = 0;
  if (ss.ss_family == AF_INET6 &&
      setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off) < 0) {
    int e = errno;
    close(fd);
    return throw_errno(env, e, "setsockopt IPV6_V6ONLY");
  }
  set_buf(fd, SO_RCVBUFFORCE, SO_RCVBUF);
  set_buf(fd, SO_SNDBUFFORCE, SO_SNDBUF);
  if (bind(fd, (struct sockaddr *)&ss, sl) < 0 || getsockname(fd, (struct sockaddr *)&ss, &sl) < 0) {
    int e = errno;
    close(fd);
    return throw_errno(env, e, fmt, addr, port);
  }
  napi_create_object(env, &obj);
  napi_set_named_property(env, obj, "fd", num(env, fd));
  napi_set_named_property(env, obj, "port",
                          num(env, ntohs(ss.ss_family == AF_INET6 ? s6->sin6_port : s4->sin_port)));
  return obj;
}

/* recvBatch(fd, buf, slotSize, maxCount, lengths, addrs) -> count. A datagram longer than the
 * slot is reported with length 0 (it could not be valid for us anyway). */
static napi_value recv_batch(napi_env env, napi_callback_info info) {
  napi_value argv[6];
  int32_t fd, slot, max, *lens;
  uint8_t *buf, *addrs;
  size_t blen, nlens, alen;
  if (!args(env, info, 6, argv) || !arg_i32(env, argv[0], &fd, "fd") ||
      !arg_buf(env, argv[1], &buf, &blen, "buf") || !arg_i32(env, argv[2], &slot, "slotSize") ||
      !arg_i32(env, argv[3], &max, "maxCount") || !arg_lengths(env, argv[4], &lens, &nlens) ||
      !arg_buf(env, argv[5], &addrs, &alen, "addrs") ||
      !check_slots(env, slot, max, blen, nlens, alen, 1))
    return NULL;
  struct mmsghdr msgs[CHUNK];
  struct iovec iov[CHUNK];
  struct sockaddr_storage names[CHUNK];
  int32_t total = 0;
  while (total < max) {
    int want = max - total < CHUNK ? max - total : CHUNK;
    memset(msgs, 0, sizeof(struct mmsghdr) * want);
    for (int i = 0; i < want; i++) {
      iov[i].iov_base = buf + (size_t)(total + i) * slot;
      iov[i].iov_len = slot;
      msgs[i].msg_hdr.msg_name = &names[i];
      msgs[i].msg_hdr.msg_namelen = sizeof names[i];
      msgs[i].msg_hdr.msg_iov = &iov[i];
      msgs[i].msg_hdr.msg_iovlen = 1;
    }
    int r = recvmmsg(fd, msgs, want, MSG_DONTWAIT, NULL);
    if (r < 0) {
      int e = errno;
      if (e == EINTR) continue;
      if (e == EAGAIN || total > 0) break;
      /* ICMP errors reported on the socket are not fatal for a listening UDP socket */
      if (e == ECONNREFUSED || e == EHOSTUNREACH || e == ENETUNREACH) break;
      return throw_errno(env, e, "recvmmsg fd %d", fd);
    }
    for (int i = 0; i < r; i++) {
      lens[total + i] = (msgs[i].msg_hdr.msg_flags & MSG_TRUNC) ? 0 : (int32_t)msgs[i].msg_len;
      if (msgs[i].msg_hdr.msg_namelen == 0) names[i].ss_family = AF_UNSPEC;
      ep_from_sa(&names[i], addrs + (size_t)(total + i) * EP_SIZE);
    }
    total += r;
    if (r < want) break;
  }
  return num(env, total);
}

/* UDP GSO (UDP_SEGMENT, Linux >= 4.18): one sendmsg carries several datagrams of one size to one
 * destination and the kernel (or the NIC) cuts them apart, so a batch of equal-size ESP packets
 * to one peer costs one trip through the socket, route and netfilter code instead of one per
 * packet. The values are the kernel's; older libc headers (and musl) may lack them. */
#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#define GSO_MAX_SEGS 64        /* UDP_MAX_SEGMENTS on every kernel that has UDP_SEGMENT */
#define GSO_MAX_BYTES 65507    /* 0xffff - IPv4 header - UDP header: the tightest of v4/v6 */
#define SEND_IOV 256           /* datagrams looked at per sendmmsg */

/* sendBatch state (an Int32Array owned by netlink/udp.ts, one per socket), so that the socket's
 * domain is not asked for on every batch and a failed GSO attempt is remembered. */
enum { ST_DOMAIN, ST_GSO, ST_SIZE };
enum { GSO_OFF = 0, GSO_UNTRIED = 1, GSO_WORKS = 2 };

/* The errors that mean "this kernel/route cannot do UDP_SEGMENT here": no support (ENOPROTOOPT,
 * EOPNOTSUPP), a device without checksum offload or an xfrm route (EIO), a segment that would
 * need IP fragmentation (EINVAL before Linux 6.x, EMSGSIZE since; sent alone, the datagram is
 * fragmented, or refused again and then dropped like any other). */
static int gso_refused(int e) {
  return e == EINVAL || e == EIO || e == ENOPROTOOPT || e == EOPNOTSUPP || e == EMSGSIZE;
}

/* sendBatch(fd, buf, slotSize, lengths, addrs, count, state?) -> datagrams sent. Stops at
 * EAGAIN/ENOBUFS; a datagram the kernel refuses (EMSGSIZE, ENETUNREACH, an IPv6 endpoint on an
 * IPv4 socket...) is dropped and the rest still go. With `state` (see ST_*), consecutive
 * datagrams to the same endpoint whose lengths are equal (the last may be shorter) go as one
 * UDP_SEGMENT message, one iovec per slot (no copy). If the first such message is refused, GSO
 * is turned off for the socket for good and the datagrams are sent one per message. */
static napi_value send_batch(napi_env env, napi_callback_info info) {
  napi_value argv[7];
  size_t argc = 7;
  int32_t fd, slot, count, *lens, *state = NULL;
  uint8_t *buf, *addrs;
  size_t blen, nlens, alen, nstate = 0;
  if (!args(env, info, 6, argv) || !arg_i32(env, argv[0], &fd, "fd") ||
      !arg_buf(env, argv[1], &buf, &blen, "buf") || !arg_i32(env, argv[2], &slot, "slotSize") ||
      !arg_lengths(env, argv[3], &lens, &nlens) || !arg_buf(env, argv[4], &addrs, &alen, "addrs") ||
      !arg_i32(env, argv[5], &count, "count") ||
      !check_slots(env, slot, count, blen, nlens, alen, 1))
    return NULL;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc >= 7) {
    napi_valuetype t;
    napi_typeof(env, argv[6], &t);
    if (t != napi_undefined) {
      if (!arg_lengths(env, argv[6], &state, &nstate)) return NULL;
      if (nstate < ST_SIZE) return throw_range(env, "state must be an Int32Array(2)");
    }
  }
  if (count == 0) return num(env, 0);
  int domain = state ? state[ST_DOMAIN] : 0;
  if (domain == 0) {
    socklen_t dl = sizeof domain;
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &dl) < 0)
      return throw_errno(env, errno, "getsockopt SO_DOMAIN fd %d", fd);
    if (state) state[ST_DOMAIN] = domain;
  }
  /* up to CHUNK messages are built per round; msgs and segs have room for one per iovec so
   * that a refused GSO message can be split in place (the pieces share its name and iovecs) */
  struct mmsghdr msgs[SEND_IOV];
  int segs[SEND_IOV]; /* datagrams in each message */
  struct iovec iov[SEND_IOV];
  struct sockaddr_storage names[CHUNK];
  union { /* aligned for CMSG_* */
    char buf[CMSG_SPACE(sizeof(uint16_t))];
    struct cmsghdr align;
  } ctl[CHUNK];
  int32_t sent = 0, i = 0;
  while (i < count) {
    int n = 0, v = 0;
    int gso = state && state[ST_GSO] != GSO_OFF;
    memset(msgs, 0, sizeof msgs[0] * CHUNK);
    while (n < CHUNK && v < SEND_IOV && i < count) {
      socklen_t nl;
      if (lens[i] < 0 || (size_t)lens[i] > (size_t)slot ||
          (nl = ep_to_sa(addrs + (size_t)i * EP_SIZE, domain, &names[n])) == 0) {
        i++;
        continue; /* unusable: not sent */
      }
      /* the message: datagram i, then (GSO) the following ones to the same endpoint while they
       * are as long as the first; one shorter datagram may end the group. */
      const uint8_t *ep = addrs + (size_t)i * EP_SIZE;
      int32_t size = lens[i], bytes = 0, k = 0;
      do {
        iov[v + k].iov_base = buf + (size_t)i * slot;
        iov[v + k].iov_len = lens[i];
        bytes += lens[i], k++, i++;
      } while (gso && size > 0 && k < GSO_MAX_SEGS && v + k < SEND_IOV && i < count &&
               lens[i] > 0 && lens[i] <= size && bytes + lens[i] <= GSO_MAX_BYTES &&
               lens[i - 1] == size && memcmp(addrs + (size_t)i * EP_SIZE, ep, EP_SIZE) == 0);
      msgs[n].msg_hdr.msg_name = &names[n];
      msgs[n].msg_hdr.msg_namelen = nl;
      msgs[n].msg_hdr.msg_iov = &iov[v];
      msgs[n].msg_hdr.msg_iovlen = k;
      if (k > 1) {
        struct cmsghdr *c = &ctl[n].align;
        uint16_t seg = (uint16_t)size;
        memset(ctl[n].buf, 0, sizeof ctl[n].buf);
        c->cmsg_level = SOL_UDP;
        c->cmsg_type = UDP_SEGMENT;
        c->cmsg_len = CMSG_LEN(sizeof seg);
        memcpy(CMSG_DATA(c), &seg, sizeof seg);
        msgs[n].msg_hdr.msg_control = ctl[n].buf;
        msgs[n].msg_hdr.msg_controllen = sizeof ctl[n].buf;
      }
      segs[n++] = k, v += k;
    }
    int off = 0;
    while (off < n) {
      int r = sendmmsg(fd, msgs + off, n - off, MSG_DONTWAIT);
      if (r < 0) {
        int e = errno;
        if (e == EINTR) continue;
        if (e == EAGAIN || e == ENOBUFS) return num(env, sent);
        if (segs[off] > 1 && gso_refused(e)) {
          /* The GSO message was refused: split it back into one message per datagram (the
           * rest of this chunk keeps its groups; it is resent from here on). If GSO never
           * worked on this socket, it is off for good. */
          if (state[ST_GSO] == GSO_UNTRIED) state[ST_GSO] = GSO_OFF;
          int k = segs[off], extra = k - 1; /* fits: msgs has room for one per iovec */
          memmove(msgs + off + k, msgs + off + 1, sizeof msgs[0] * (n - off - 1));
          memmove(segs + off + k, segs + off + 1, sizeof segs[0] * (n - off - 1));
          for (int j = k - 1; j >= 0; j--) {
            msgs[off + j] = msgs[off];
            msgs[off + j].msg_hdr.msg_iov += j;
            msgs[off + j].msg_hdr.msg_iovlen = 1;
            msgs[off + j].msg_hdr.msg_control = NULL;
            msgs[off + j].msg_hdr.msg_controllen = 0;
            segs[off + j] = 1;
          }
          n += extra;
          continue;
        }
        off++; /* this message failed; drop its datagrams */
        continue;
      }
      if (state && state[ST_GSO] == GSO_UNTRIED)
        for (int j = off; j < off + r; j++)
          if (segs[j] > 1) state[ST_GSO] = GSO_WORKS;
      for (int j = off; j < off + r; j++) sent += segs[j];
      off += r;
    }
  }
  return num(env, sent);
}

/* ---- readiness --------------------------------------------------------------------------- */

typedef struct {
  uv_poll_t handle;
  napi_env env;
  napi_ref callback;
  napi_async_context context;
  int stopped, closed, finalized;
} poller;

static void poll_cb(uv_poll_t *h, int status, int events) {
  poller *p = h->data;
  if (p->stopped) return;
  napi_env env = p->env;
  napi_handle_scope scope;
  napi_value cb, recv, result;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_get_reference_value(env, p->callback, &cb);
  napi_get_global(env, &recv); /* napi_make_callback needs an object receiver */
  if (napi_make_callback(env, p->context, recv, cb, 0, NULL, &result) == napi_pending_exception) {
    napi_value err;
    napi_get_and_clear_last_exception(env, &err);
    napi_fatal_exception(env, err); /* -> process 'uncaughtException', as for any I/O callback */
  }
  napi_close_handle_scope(env, scope);
}

static void poll_closed(uv_handle_t *h) {
  poller *p = h->data;
  p->closed = 1;
  if (p->finalized) free(p);
}

static void poll_finalize(napi_env env, void *data, void *hint) {
  poller *p = data;
  p->finalized = 1; /* if never stopped, it keeps running: the callback reference holds it */
  if (p->closed) free(p);
}

/* pollStart(fd, callback) -> handle; callback() runs on each readable event (level-triggered) */
static napi_value poll_start(napi_env env, napi_callback_info info) {
  napi_value argv[2], handle, resource;
  int32_t fd;
  napi_valuetype t;
  uv_loop_t *loop;
  if (!args(env, info, 2, argv) || !arg_i32(env, argv[0], &fd, "fd")) return NULL;
  napi_typeof(env, argv[1], &t);
  if (t != napi_function) return throw_type(env, "callback must be a function");
  if (napi_get_uv_event_loop(env, &loop) != napi_ok) return throw_type(env, "no event loop");
  poller *p = calloc(1, sizeof *p);
  if (p == NULL) return throw_errno(env, ENOMEM, "pollStart fd %d", fd);
  int r = uv_poll_init(loop, &p->handle, fd);
  if (r < 0) {
    free(p);
    return throw_errno(env, -r, "uv_poll_init fd %d", fd);
  }
  p->env = env;
  p->handle.data = p;
  napi_create_reference(env, argv[1], 1, &p->callback);
  napi_create_string_utf8(env, "ntm.poll", NAPI_AUTO_LENGTH, &resource);
  napi_async_init(env, NULL, resource, &p->context);
  r = uv_poll_start(&p->handle, UV_READABLE, poll_cb);
  if (r < 0 || napi_create_external(env, p, poll_finalize, NULL, &handle) != napi_ok) {
    p->stopped = 1, p->finalized = 1;
    napi_delete_reference(env, p->callback);
    napi_async_destroy(env, p->context);
    uv_close((uv_handle_t *)&p->handle, poll_closed);
    return r < 0 ? throw_errno(env, -r, "uv_poll_start fd %d", fd) : NULL;
  }
  return handle;
}

/* pollStop(handle): idempotent; stop before closing the fd */
static napi_value poll_stop(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  poller *p;
  if (!args(env, info, 1, argv)) return NULL;
  if (napi_get_value_external(env, argv[0], (void **)&p) != napi_ok)
    return throw_type(env, "handle must come from pollStart");
  if (!p->stopped) {
    p->stopped = 1;
    uv_poll_stop(&p->handle);
    napi_delete_reference(env, p->callback);
    napi_async_destroy(env, p->context);
    uv_close((uv_handle_t *)&p->handle, poll_closed);
  }
  return NULL;
}

static napi_value fd_close(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int32_t fd;
  if (!args(env, info, 1, argv) || !arg_i32(env, argv[0], &fd, "fd")) return NULL;
  if (close(fd) < 0 && errno != EINTR) return throw_errno(env, errno, "close fd %d", fd);
  return NULL;
}

/* ---- netlink ----------------------------------------------------------------------------- */

/* nlOpen(protocol, groups) -> fd: raw AF_NETLINK socket, non-blocking, bound to `groups` */
static napi_value nl_open(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int32_t proto, groups;
  if (!args(env, info, 2, argv) || !arg_i32(env, argv[0], &proto, "protocol") ||
      !arg_i32(env, argv[1], &groups, "groups"))
    return NULL;
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, proto);
  if (fd < 0) return throw_errno(env, errno, "socket AF_NETLINK %d", proto);
  int one = 1;
#ifdef NETLINK_EXT_ACK
  setsockopt(fd, SOL_NETLINK, NETLINK_EXT_ACK, &one, sizeof one); /* error strings in acks */
#endif
#ifdef NETLINK_CAP_ACK
  setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof one); /* acks without the request */
#endif
  if (groups != 0) set_buf(fd, SO_RCVBUFFORCE, SO_RCVBUF); /* event bursts at handover */
  struct sockaddr_nl sa;
  memset(&sa, 0, sizeof sa);
  sa.nl_family = AF_NETLINK;
  sa.nl_groups = (uint32_t)groups;
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
    int e = errno;
    close(fd);
    return throw_errno(env, e, "bind AF_NETLINK %d groups 0x%x", proto, (unsigned)groups);
  }
  return num(env, fd);
}

/* nlSend(fd, buf): one datagram to the kernel */
static napi_value nl_send(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int32_t fd;
  uint8_t *buf;
  size_t len;
  if (!args(env, info, 2, argv) || !arg_i32(env, argv[0], &fd, "fd") ||
      !arg_buf(env, argv[1], &buf, &len, "buf"))
    return NULL;
  struct sockaddr_nl sa;
  memset(&sa, 0, sizeof sa);
  sa.nl_family = AF_NETLINK;
  ssize_t r;
  do r = sendto(fd, buf, len, 0, (struct sockaddr *)&sa, sizeof sa);
  while (r < 0 && errno == EINTR);
  if (r < 0) return throw_errno(env, errno, "sendto netlink fd %d", fd);
  return NULL;
}

/* nlRecv(fd, buf, timeoutMs) -> bytes of one datagram, 0 on timeout (timeoutMs 0 = don't wait) */
static napi_value nl_recv(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int32_t fd, timeout;
  uint8_t *buf;
  size_t len;
  if (!args(env, info, 3, argv) || !arg_i32(env, argv[0], &fd, "fd") ||
      !arg_buf(env, argv[1], &buf, &len, "buf") || !arg_i32(env, argv[2], &timeout, "timeoutMs"))
    return NULL;
  for (;;) {
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    int r = poll(&pfd, 1, timeout);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return throw_errno(env, errno, "poll netlink fd %d", fd);
    if (r == 0) return num(env, 0);
    ssize_t n = recv(fd, buf, len, MSG_DONTWAIT | MSG_TRUNC);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n < 0) return throw_errno(env, errno, "recv netlink fd %d", fd);
    if ((size_t)n > len) return throw_errno(env, EMSGSIZE, "recv netlink fd %d (%zd bytes)", fd, n);
    return num(env, (int32_t)n);
  }
}

/* ---- module ------------------------------------------------------------------------------ */

NAPI_MODULE_INIT() {
  static const struct {
    const char *name;
    napi_callback fn;
  } fns[] = {
      {"tunOpen", tun_open},     {"udpOpen", udp_open},     {"readBatch", read_batch},
      {"writeBatch", write_batch}, {"recvBatch", recv_batch}, {"sendBatch", send_batch},
      {"pollStart", poll_start}, {"pollStop", poll_stop},   {"close", fd_close},
      {"nlOpen", nl_open},       {"nlSend", nl_send},       {"nlRecv", nl_recv},
  };
  for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
    napi_value f;
    napi_create_function(env, fns[i].name, NAPI_AUTO_LENGTH, fns[i].fn, NULL, &f);
    napi_set_named_property(env, exports, fns[i].name, f);
  }
  return exports;
}
