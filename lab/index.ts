export * from './lab.js';
export * from './nat.js';
export * from './topology.js';
export * from './udp.js';
export * from './spoof.js';
