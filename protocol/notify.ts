// What the Notification Server and its nodes share about MQTT (docs/ns.md): the topic a node
// listens on, the credentials it logs in to the broker with, and the sealed payload.
//
// Everything derives from Kntmns and its key ID, which only the node, its DC and the NS hold:
//   user name  = the key ID as 8 lower-case hex digits
//   client ID  = "ntm-" ‖ user name (one session per key: a reconnect takes the old one over)
//   password   = base64url(HMAC-SHA256(Kntmns, "ntmobile mqtt v1"))
//   topic      = "ntmobile/n/" ‖ user name
// The password is derived, not Kntmns itself, so that a broker (Mosquitto keeps the passwords it is
// given) or anyone reading its configuration learns nothing that could seal a notification.
// The payload is an ordinary control message (protocol/control.ts envelope, no non-ESP marker)
// of type `notification` under key class Kntmns: the broker and other subscribers can neither
// read it nor forge one, and the node's replay checks are the control channel's.

import { createHmac } from 'node:crypto';
import { KeyClass, sealMessage, type Body } from './control.js';
import { newMessageId } from './channel.js';

export const NOTIFY_TOPIC_PREFIX = 'ntmobile/n/';
const PASSWORD_LABEL = 'ntmobile mqtt v1';

export function keyIdHex(keyId: number): string {
  return (keyId >>> 0).toString(16).padStart(8, '0');
}

export function notifyTopic(keyId: number): string {
  return `${NOTIFY_TOPIC_PREFIX}${keyIdHex(keyId)}`;
}

export function mqttUsername(keyId: number): string {
  return keyIdHex(keyId);
}

export function mqttClientId(keyId: number): string {
  return `ntm-${keyIdHex(keyId)}`;
}

export function mqttPassword(kntmns: Buffer): string {
  return createHmac('sha256', kntmns).update(PASSWORD_LABEL).digest('base64url');
}

/** The key ID a user name names, or null if it is not one (8 hex digits, not 0). */
export function keyIdFromUsername(username: string | undefined): number | null {
  if (username === undefined || !/^[0-9a-f]{8}$/.test(username)) return null;
  const id = Number.parseInt(username, 16);
  return id === 0 ? null : id;
}

/** A notification sealed under Kntmns: the MQTT payload the NS publishes on the node's topic. */
export function sealNotification(body: Body<'notification'>, key: { keyId: number; key: Buffer }, now: number): Buffer {
  return sealMessage('notification', body, { keyClass: KeyClass.ntmns, keyId: key.keyId, messageId: newMessageId(), timestamp: now }, key.key);
}
