#!/usr/bin/env node
// `ntmobile-dc serve --config FILE`: one Direction Coordinator. `status` prints what it holds.

import { runServerCli } from '../serve.js';
import { tlsFileFields } from '../tls.js';
import { parseDcConfig } from './config.js';
import { DirectionCoordinator } from './dc.js';

const USAGE = `Usage: ntmobile-dc serve --config FILE [--status FILE] [--verbose] [--check]
       ntmobile-dc --help | --version

Runs a Direction Coordinator: registration of its zone's nodes, the zone's authoritative DNS,
route direction, Key Distribution from the AS (mutual TLS).

Config (JSON; relative paths are relative to the config file):
  zone            the DNS zone this DC serves, e.g. "fleet1.test"                (required)
  nsName          its host name, answered as the zone's NS, e.g. "dc.fleet1.test" (required)
  publicAddress   the address nodes, DCs and the AS reach it at (NS glue)        (required)
  listen          { "address": "::", "port": 4500 }       UDP control port
  tls             { "port": 4501, "ca", "cert", "key" }   mutual TLS (AS, other DCs, RSs)
  dns             { "address", "port": 53 } or null       authoritative DNS for the zone
  pool            { "ipv4": "10.77.0.0/16", "ipv6": "fd4e:544d:1::/64" }   VIP pools
  state           state file (keys, VIPs, registrations; kept 0600)         (required)
  keepaliveSeconds (20), expireAfterKeepalives (3), routeLifetimeSeconds (3600)
  resolvers       DNS servers for finding other DCs by NS record and general hosts' addresses
                  (["198.18.0.53"])
  dc              fixed addresses of other zones' DCs: { "fleet2.test": "198.18.0.20" }
  relays          Relay Servers for routes that cannot go direct and for general hosts (default none):
                  [{ "name": "rs1.relay.test", "address": "198.18.0.14", "address6": "2001:db8::e",
                     "port": 4600, "tlsPort": 4601 }]
                  name: a DNS name in the RS's certificate (OU rs); address (IPv4) and/or address6
                  (IPv6); port and tlsPort default to 4600 and 4601
  ns              the Notification Server that wakes nodes in MQTT mode (default none: no MQTT mode):
                  { "name": "ns1.notify.test", "address": "198.18.0.16", "port": 4700, "tlsPort": 4701,
                    "maxKeepaliveSeconds": 1800 }
                  name: a DNS name in the NS's certificate (OU ns); maxKeepaliveSeconds: the longest
                  UDP keepalive interval granted to a node in MQTT mode
  general         { "allowPrivate": false }  general hosts' addresses in private ranges (RFC 1918,
                  100.64.0.0/10, ULA) are not handed to an RS unless true; loopback, link-local,
                  multicast, reserved, the VIP pools and the relays' addresses never are

Options:
  --status FILE   write counters and registrations as JSON to FILE every second
  --verbose       print the protocol sequence to stderr
  --check         validate the config and exit (0 valid, 2 invalid); nothing is started
  -h, --help      this help
Exit status: 0 stopped by a signal, 2 bad command line or config, 1 anything else.
Signals: SIGINT/SIGTERM stop; SIGUSR1 prints the status.
`;

runServerCli({
  program: 'ntmobile-dc',
  usage: USAGE,
  parse: parseDcConfig,
  files: (config) => tlsFileFields(config.tls),
  ports: (config) => [
    { field: 'listen.port', port: config.listen.port },
    { field: 'tls.port', port: config.tls.port },
    ...(config.dns ? [{ field: 'dns.port', port: config.dns.port }] : []),
  ],
  create: (config) => new DirectionCoordinator(config),
  ready: (config, dc) => `${config.zone} udp ${dc.port} tls ${dc.tlsPort}`,
});
