#!/usr/bin/env node
// `ntmobile-rs serve --config FILE`: one Relay Server (docs/relay.md).

import { runServerCli } from '../serve.js';
import { tlsFileFields } from '../tls.js';
import { parseRsConfig } from './config.js';
import { RelayServer } from './rs.js';

const USAGE = `Usage: ntmobile-rs serve --config FILE [--status FILE] [--verbose] [--check]
       ntmobile-rs --help | --version

Runs a Relay Server: carries tunnels between nodes that cannot reach each other directly (both
behind NATs, IPv4 ↔ IPv6), and, with "gateway", tunnels to general hosts that run no NTMobile.
DCs make first contact over mutual TLS and direct routes here over UDP.

Config (JSON; relative paths are relative to the config file):
  name            a DNS name of its certificate, e.g. "rs1.relay.test"          (required)
  listen          { "address": "::", "port": 4600 }      UDP: punching, relaying, directions
  tls             { "port": 4601, "ca", "cert", "key" }  mutual TLS (first contact by DCs) (required)
  privateKeyFile  static X25519 key, made on first start (0600), e.g. "rs.key" (required)
  gateway         { "tun": "ntmrs0", "mtu": 1400, "nftTable": "ntmobile_rs", "allowPrivate": false }
                  optional: terminate tunnels for general hosts (TUN, nftables, IP forwarding);
                  allowPrivate: also forward to private ranges (RFC 1918, 100.64.0.0/10, ULA);
                  loopback, link-local, multicast, reserved and the RS's own addresses never
  quota           { "routeBytesPerSecond": 125000000, "nodeBytesPerSecond": 250000000,
                    "routeBytes": 0, "maxRoutes": 10000, "maxRoutesPerNode": 256 }  (0 bytes: unlimited)
  idleSeconds     (120) a route or gateway tunnel with no traffic or keepalive for this long ends

Options:
  --status FILE   write counters, routes, DC keys and gateway tunnels as JSON to FILE every second
  --verbose       print the protocol sequence to stderr
  --check         validate the config and exit (0 valid, 2 invalid); nothing is started
  -h, --help      this help
Exit status: 0 stopped by a signal, 2 bad command line or config, 1 anything else.
Signals: SIGINT/SIGTERM stop (and remove what was set up); SIGUSR1 prints the status.
`;

runServerCli({
  program: 'ntmobile-rs',
  usage: USAGE,
  parse: parseRsConfig,
  files: (config) => tlsFileFields(config.tls),
  ports: (config) => [
    { field: 'listen.port', port: config.listen.port },
    { field: 'tls.port', port: config.tls.port },
  ],
  create: (config) => new RelayServer(config),
  ready: (config, rs) => `${config.name} udp ${rs.port} tls ${rs.tlsPort}${config.gateway ? ` gateway ${config.gateway.tun}` : ''}`,
});
