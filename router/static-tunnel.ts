// `ntmobile tunnel`: one node with static peers (router/static-config.ts) on the real kernel
// devices: a TUN device, one UDP port, and a route to each peer VIP through the TUN.

import { isIP } from 'node:net';
import { InboundSa, OutboundSa } from '../protocol/esp.js';
import { ipv4ToNumber, ipv6ToBytes } from '../protocol/ip.js';
import { TunDevice } from '../netlink/tun.js';
import { UdpSocket } from '../netlink/udp.js';
import { addRoute } from '../netlink/rtnetlink.js';
import { Engine } from '../tunnel/engine.js';
import { type StaticConfig, type StaticPeer } from './static-config.js';
import { Tunnel, TunnelTable } from '../tunnel/table.js';

export function tunnelFromPeer(p: StaticPeer): Tunnel {
  const vip4 = p.vips.find((a) => isIP(a) === 4);
  const vip6 = p.vips.find((a) => isIP(a) === 6);
  return new Tunnel(
    p.name,
    vip4 === undefined ? null : ipv4ToNumber(vip4),
    vip6 === undefined ? null : ipv6ToBytes(vip6),
    new OutboundSa({ suite: p.suite, ...p.outbound }),
    new InboundSa({ suite: p.suite, ...p.inbound }),
    p.endpoint,
    p.keepaliveSeconds,
  );
}

export async function startStaticTunnel(config: StaticConfig): Promise<Engine> {
  const table = new TunnelTable();
  for (const p of config.peers) table.add(tunnelFromPeer(p));
  const device = await TunDevice.open({ name: config.tun.name, mtu: config.tun.mtu, addresses: config.tun.addresses });
  let socket: UdpSocket;
  try {
    socket = UdpSocket.open({ bindAddress: config.listen.address, port: config.listen.port });
  } catch (e) {
    device.close();
    throw e;
  }
  try {
    for (const p of config.peers) {
      for (const vip of p.vips) {
        await addRoute(`${vip}/${isIP(vip) === 4 ? 32 : 128}`, { dev: config.tun.name }).catch((e: Error) => {
          if (!/EEXIST/.test(e.message)) throw e;
        });
      }
    }
  } catch (e) {
    device.close();
    socket.close();
    throw e;
  }
  const engine = new Engine(device, socket, table);
  engine.start();
  return engine;
}
