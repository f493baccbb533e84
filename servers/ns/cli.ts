#!/usr/bin/env node
// `ntmobile-ns serve --config FILE`: one Notification Server (docs/ns.md).

import { runServerCli } from '../serve.js';
import { tlsFileFields } from '../tls.js';
import { parseNsConfig } from './config.js';
import { NotificationServer } from './ns.js';

const USAGE = `Usage: ntmobile-ns serve --config FILE [--status FILE] [--verbose] [--check]
       ntmobile-ns --help | --version

Runs a Notification Server: wakes nodes behind NATs over one MQTT session each (instead of a UDP
keepalive every 20 s), when their DC has a tunnel for them. DCs make first contact over mutual
TLS and send keys and notifications over UDP; nodes connect to the MQTT broker over TLS.

Config (JSON; relative paths are relative to the config file):
  name         a DNS name of its certificate (OU ns), e.g. "ns1.notify.test"   (required)
  listen       { "address": "::", "port": 4700 }      UDP: NS Key Distribution, Notification (Kdcns)
  tls          { "port": 4701, "ca", "cert", "key" }  mutual TLS (first contact by DCs); the
               embedded broker serves MQTT with the same certificate             (required)
  broker       the MQTT broker nodes connect to; one of
               { "type": "embedded", "address": "::", "port": 8883,
                 "publicUrl": "mqtts://NAME:8883", "maxKeepaliveSeconds": 3600 }   (default)
               { "type": "mosquitto", "url": "mqtts://127.0.0.1:8883", "ca": "ca.crt",
                 "username": "ntmobile-ns", "passwordFile": "mqtt.password",
                 "accessControl": "dynsec", "publicUrl": "mqtts://ns1.notify.test:8883" }
               publicUrl is what DCs tell their nodes; accessControl "dynsec" makes one
               Mosquitto client per node key through the dynamic-security plugin (the NS's user
               must be its admin), "none" leaves who may subscribe to the broker's own rules
  state        file keeping the node keys across restarts (0600); default: memory only
  maxKeys      (100000) node keys held at most

Options:
  --status FILE   write counters, keys and DC contacts as JSON to FILE every second
  --verbose       print the protocol sequence to stderr
  --check         validate the config and exit (0 valid, 2 invalid); nothing is started
  -h, --help      this help
Exit status: 0 stopped by a signal, 2 bad command line or config, 1 anything else.
Signals: SIGINT/SIGTERM stop; SIGUSR1 prints the status.
`;

runServerCli({
  program: 'ntmobile-ns',
  usage: USAGE,
  parse: parseNsConfig,
  files: (config) => [...tlsFileFields(config.tls), ...(config.broker.type === 'external' && config.broker.caFile !== null ? [{ field: 'broker.ca', path: config.broker.caFile }] : [])],
  ports: (config) => [
    { field: 'listen.port', port: config.listen.port },
    { field: 'tls.port', port: config.tls.port },
    ...(config.broker.type === 'embedded' ? [{ field: 'broker.port', port: config.broker.port }] : []),
  ],
  create: (config) => new NotificationServer(config),
  ready: (config, ns) => `${config.name} udp ${ns.port} tls ${ns.tlsPort} mqtt ${ns.brokerPort ?? config.broker.publicUrl}`,
});
