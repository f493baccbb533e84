// A Mosquitto broker for the NS in "mosquitto" mode (docs/ns.md), as an operator would set it up:
// TLS with the NS's certificate, no anonymous clients, and the dynamic-security plugin, whose
// admin user is the NS (it creates one client per node key). Used by the tests and the keepalive
// benchmark; the files go into a directory of the caller's.

import { execFileSync, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';

export const MOSQUITTO = '/usr/sbin/mosquitto';

/** Where Debian puts the dynamic-security plugin (multiarch directory), or null. */
export function dynsecPlugin(): string | null {
  for (const dir of ['/usr/lib', '/usr/local/lib']) {
    if (!existsSync(dir)) continue;
    const direct = path.join(dir, 'mosquitto_dynamic_security.so');
    if (existsSync(direct)) return direct;
    for (const sub of readdirSync(dir)) {
      const p = path.join(dir, sub, 'mosquitto_dynamic_security.so');
      if (existsSync(p)) return p;
    }
  }
  return null;
}

/** Why Mosquitto cannot run here, or null if it can. */
export function mosquittoMissing(): string | null {
  if (!existsSync(MOSQUITTO)) return `${MOSQUITTO} not found (Debian package mosquitto; scripts/setup.sh installs it)`;
  if (dynsecPlugin() === null) return 'mosquitto_dynamic_security.so not found (Debian package mosquitto)';
  return null;
}

export interface MosquittoSetup {
  configFile: string;
  adminUser: string;
  adminPassword: string;
  passwordFile: string;
}

/** Writes mosquitto.conf and the dynamic-security file (admin: the NS) into `dir`. */
export function writeMosquittoConfig(dir: string, o: { address: string; port: number; certFile: string; keyFile: string; adminUser?: string; adminPassword?: string }): MosquittoSetup {
  const plugin = dynsecPlugin();
  if (plugin === null) throw new Error('mosquitto_dynamic_security.so not found');
  const adminUser = o.adminUser ?? 'ntmobile-ns';
  const adminPassword = o.adminPassword ?? 'ns-admin-secret';
  const dynsec = path.join(dir, 'dynamic-security.json');
  execFileSync('mosquitto_ctrl', ['dynsec', 'init', dynsec, adminUser, adminPassword], { stdio: 'pipe' });
  const configFile = path.join(dir, 'mosquitto.conf');
  writeFileSync(
    configFile,
    [
      // Run as the user that started it (root in the lab): it reads 0600 keys of that user.
      'user root',
      'per_listener_settings false',
      'allow_anonymous false',
      'persistence false',
      'log_dest stderr',
      'log_type error',
      'log_type warning',
      'log_type notice',
      'log_type information',
      `listener ${o.port} ${o.address}`,
      `certfile ${o.certFile}`,
      `keyfile ${o.keyFile}`,
      `plugin ${plugin}`,
      `plugin_opt_config_file ${dynsec}`,
      '',
    ].join('\n'),
  );
  const passwordFile = path.join(dir, 'ns-mqtt.password');
  writeFileSync(passwordFile, `${adminPassword}\n`, { mode: 0o600 });
  return { configFile, adminUser, adminPassword, passwordFile };
}

/** Resolves once Mosquitto says it is running; rejects with its log if it exits first. */
export function mosquittoReady(child: ChildProcess, timeoutMs = 10_000): Promise<void> {
  let log = '';
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`mosquitto: not running within ${timeoutMs} ms:\n${log}`)), timeoutMs);
    child.stderr!.on('data', (d: Buffer) => {
      log += d.toString();
      if (/ running/.test(log)) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`mosquitto exited with ${code}:\n${log}`));
    });
  });
}
