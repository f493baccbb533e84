#!/usr/bin/env node
// ntm-lab: build, list and remove namespace testbeds from the shell.

import { Lab, cleanup, listLabs, removeLab } from './lab.js';
import { removeStaleInstances } from './openwrt.js';
import { internetWithNats, twoHosts, type SiteNat } from './topology.js';

const HELP = `usage: node dist/lab/cli.js <command> [options]

Namespace testbed for ntmobile (Linux network namespaces, veth, bridges, nftables NATs). Needs root.

commands:
  up <topology> [--keep] [options]
      Build a topology, print its addresses as JSON on stdout, then wait: Ctrl-C tears it down.
      With --keep, exit at once and leave the lab in place (remove it with 'down <id>').
      topologies:
        two-hosts                       hosts a and b over one veth (10.0.0.1/24, 10.0.0.2/24)
        internet [--a T] [--b T]        an internet (core router, backbone 198.18.0.0/24) with sites a
                 [--extra c=T,...]      and b, each T = none | eim | symmetric (default: --a eim --b eim);
                 [--overlap]            site i has the access network 198.18.i.0/24; a NAT site has a
                                        private LAN behind its NAT box. nodeA in site a, nodeB in site b;
                                        --extra adds sites without nodes; --overlap gives every NAT site
                                        the LAN 10.0.0.0/24. Addresses: see docs/lab.md
      Enter a host:  ip netns exec ntm-<id>-<host> bash
  down <id>      Remove lab <id>: kill its processes, delete its namespaces, record and logs
                 (and its OpenWrt userland instances, lab/openwrt.ts).
  list           Show labs (id, state, owner pid, namespaces). States: running (owner alive),
                 kept (up --keep), stale (owner died without cleaning up).
  cleanup [--all]
                 Remove stale labs (owner pid dead) and ntm-<id>-* namespaces that no record owns,
                 and OpenWrt userland instances of labs that are gone.
                 Labs of live processes are never touched; kept labs only with --all.
  --help         This text.

Records live in /run/ntm-lab/<id>.json, logs in /tmp/ntm-lab-<id>/. Progress goes to stderr.`;

function flag(args: string[], name: string): boolean {
  const i = args.indexOf(name);
  if (i < 0) return false;
  args.splice(i, 1);
  return true;
}

function option(args: string[], name: string): string | undefined {
  const i = args.indexOf(name);
  if (i < 0) return undefined;
  const v = args[i + 1];
  if (v === undefined || v.startsWith('--')) throw new Error(`${name} needs a value`);
  args.splice(i, 2);
  return v;
}

function natType(v: string | undefined, dflt: SiteNat): SiteNat {
  if (v === undefined) return dflt;
  if (v === 'none' || v === 'eim' || v === 'symmetric') return v;
  throw new Error(`NAT type '${v}': expected none, eim or symmetric`);
}

async function up(args: string[]): Promise<void> {
  const keep = flag(args, '--keep');
  const topo = args.shift();
  if (!topo) throw new Error('up: which topology? (two-hosts | internet); see --help');
  const lab = await Lab.create(`cli up ${topo}`, { verbose: true });
  let info: unknown;
  try {
    if (topo === 'two-hosts') {
      const t = await twoHosts(lab);
      info = { hosts: { a: t.a.ns, b: t.b.ns }, addrs: { a: [t.aAddr, t.aAddr6], b: [t.bAddr, t.bAddr6] } };
    } else if (topo === 'internet') {
      const aNat = natType(option(args, '--a'), 'eim');
      const bNat = natType(option(args, '--b'), 'eim');
      const extraSpec = option(args, '--extra');
      const overlap = flag(args, '--overlap');
      const extraSites: Record<string, SiteNat> = {};
      for (const part of extraSpec ? extraSpec.split(',') : []) {
        const [k, v] = part.split('=');
        if (!k || !v) throw new Error(`--extra: expected name=type, got '${part}'`);
        extraSites[k] = natType(v, 'none');
      }
      const t = await internetWithNats(lab, { aNat, bNat, extraSites, overlap });
      info = {
        hosts: Object.fromEntries([...lab.hosts.values()].map((h) => [h.name, h.ns])),
        addrs: t.addrs,
        sites: Object.fromEntries(
          Object.values(t.sites).map((s) => [
            s.name,
            { nat: s.nat, prefix: s.prefix, gateway: s.gateway, segment: s.segment.ns, public: s.natBox?.publicAddrs ?? null },
          ]),
        ),
      };
    } else {
      throw new Error(`unknown topology '${topo}' (two-hosts | internet)`);
    }
    if (args.length) throw new Error(`unexpected arguments: ${args.join(' ')}`);
  } catch (e) {
    await lab.destroy();
    throw e;
  }
  lab.setInfo(info);
  process.stdout.write(JSON.stringify({ id: lab.id, ...(info as object) }, null, 2) + '\n');
  if (keep) {
    lab.keepAfterExit();
    process.stderr.write(`[lab ${lab.id}] kept; remove with: node dist/lab/cli.js down ${lab.id}\n`);
    return;
  }
  process.stderr.write(`[lab ${lab.id}] up; Ctrl-C to tear down\n`);
  // the lab's own SIGINT/SIGTERM handlers tear it down and end the process
  setInterval(() => {}, 1 << 30);
}

async function main(argv: string[]): Promise<number> {
  const args = [...argv];
  const cmd = args.shift();
  if (!cmd || cmd === '--help' || cmd === '-h' || cmd === 'help' || args.includes('--help')) {
    process.stdout.write(HELP + '\n');
    return cmd ? 0 : 2;
  }
  switch (cmd) {
    case 'up':
      await up(args);
      return 0;
    case 'down': {
      const id = args[0];
      if (!id) throw new Error('down: which lab id? (see list)');
      const removed = removeLab(id);
      process.stderr.write(`[lab ${id}] removed ${removed.length} namespace(s)\n`);
      for (const i of await removeStaleInstances(new Set(listLabs().map((l) => l.id)))) process.stderr.write(`  OpenWrt userland instance ${i}\n`);
      return 0;
    }
    case 'list': {
      const labs = listLabs();
      if (!labs.length) process.stderr.write('no labs\n');
      for (const l of labs) {
        process.stdout.write(
          `${l.id}  ${l.state.padEnd(7)}  pid ${String(l.pid).padEnd(7)}  ${String(l.present.length).padStart(2)} ns  ${l.created}  ${l.label}\n`,
        );
      }
      return 0;
    }
    case 'cleanup': {
      const r = cleanup({ all: flag(args, '--all') });
      process.stderr.write(`cleanup: removed ${r.labs.length} lab(s), ${r.removed.length} namespace(s)\n`);
      for (const ns of r.removed) process.stderr.write(`  ${ns}\n`);
      // OpenWrt userland instances (lab/openwrt.ts) of labs that are gone
      for (const i of await removeStaleInstances(new Set(listLabs().map((l) => l.id)))) process.stderr.write(`  OpenWrt userland instance ${i}\n`);
      return 0;
    }
    default:
      throw new Error(`unknown command '${cmd}'; see --help`);
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`lab: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exitCode = 1;
  },
);
