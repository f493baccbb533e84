// A swarm of NTMobile nodes on the fleet's Internet (lab/tools/swarm.ts: many nodes in one
// process, each with its own account, key and UDP port), so that a router can open tunnels to many
// distinct peers by name without a process per peer. The accounts go into the fleet's AS store
// (the AS picks up the change on the next login); the nodes register under one zone at its DC.

import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { DC_CONTROL_PORT } from '../protocol/discovery.js';
import { type EspSuite } from '../protocol/esp.js';
import { generateX25519, rawPrivate } from '../protocol/keys.js';
import { AccountStore } from '../servers/as/store.js';
import { type Fleet } from './fleet.js';
import { type Host, type Lab } from './lab.js';
import { startProgram, type Program } from './program.js';
import { type SwarmConfig } from './tools/swarm.js';

const SWARM_TOOL = fileURLToPath(new URL('./tools/swarm.js', import.meta.url));

export interface SwarmOptions {
  /** Nodes in the swarm. */
  count: number;
  /** 'dc1' (names under fleet1.test) or 'dc2' (fleet2.test, default). */
  dc?: 'dc1' | 'dc2';
  /** Node names are `${prefix}${i}.${zone}`, i from 1 (default 'peer'). */
  prefix?: string;
  /** UDP port of the first node; node i has firstPort + i - 1 (default 5000). */
  firstPort?: number;
  suite?: EspSuite;
  verbose?: boolean;
}

export interface Swarm {
  host: Host;
  address: string;
  names: string[];
  program: Program;
}

export async function startSwarm(lab: Lab, fleet: Fleet, o: SwarmOptions): Promise<Swarm> {
  const { count, prefix = 'peer', firstPort = 5000 } = o;
  if (!Number.isInteger(count) || count < 1 || firstPort + count > 65536) throw new RangeError(`startSwarm: ${count} nodes from port ${firstPort} do not fit`);
  const dc = fleet[o.dc ?? 'dc2'];
  const zone = JSON.parse(readFileSync(dc.configPath, 'utf8')).zone as string;
  // The AS's address and CA as the routers reach them.
  const reach = JSON.parse(readFileSync(fleet.ra.configPath, 'utf8')).as as { url: string; ca: string };
  const { host, addr } = await fleet.addInternetHost('swarm');

  // scryptN as the fleet's own accounts: the AS checks each login with the account's own cost.
  const store = AccountStore.open(fleet.as.storePath, { scryptN: 2 ** 14 });
  const nodes: SwarmConfig['nodes'] = [];
  for (let i = 1; i <= count; i++) {
    const name = `${prefix}${i}.${zone}`;
    const email = `${prefix}${i}@${zone}`;
    const password = `swarm-${prefix}${i}-secret`;
    const key = generateX25519();
    await store.addAccount(email, password);
    store.bindNames(email, [name]);
    store.setPublicKey(email, key.publicKey.toString('base64url'));
    nodes.push({ name, email, password, privateKey: rawPrivate(key.privateKey).toString('base64'), port: firstPort + i - 1 });
  }
  const config: SwarmConfig = { as: reach, dc: { address: dc.address, port: DC_CONTROL_PORT }, bind: addr, suite: o.suite ?? 'aes-gcm', nodes };
  const configPath = path.join(fleet.dir, 'swarm.json');
  writeFileSync(configPath, JSON.stringify(config), { mode: 0o600 });
  const program = await startProgram(lab, host, SWARM_TOOL, ['--config', configPath, ...(o.verbose ? ['--verbose'] : [])], {
    tag: 'swarm',
    // Logins run a few at a time: scrypt at the AS and the key's distribution to the DC each.
    timeoutMs: 30_000 + count * 500,
  });
  return { host, address: addr, names: nodes.map((n) => n.name), program };
}
