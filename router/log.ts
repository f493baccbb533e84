// The router daemon's log: one line per event, with a level (error, warn, info, debug), to
// stderr (procd passes it to the system log on OpenWrt). Errors and warnings are always written;
// `info` adds the lifecycle (listening, registered, handovers, reloads); `debug` is the protocol
// sequence (what --verbose shows). The level can change at run time (a reload).

import { LOG_LEVELS, type LogLevel } from './config.js';

export interface Logger {
  error(line: string): void;
  warn(line: string): void;
  info(line: string): void;
  debug(line: string): void;
  level: LogLevel;
}

export function createLogger(level: LogLevel, write: (line: string) => void = (l) => process.stderr.write(`${l}\n`)): Logger {
  const logger: Logger = {
    level,
    error: (l) => emit('error', l),
    warn: (l) => emit('warn', l),
    info: (l) => emit('info', l),
    debug: (l) => emit('debug', l),
  };
  function emit(at: LogLevel, line: string): void {
    if (LOG_LEVELS.indexOf(at) <= LOG_LEVELS.indexOf(logger.level)) write(`${at}: ${line}`);
  }
  return logger;
}

/** A logger that drops everything (library use, tests). */
export const silentLogger: Logger = { level: 'error', error: () => undefined, warn: () => undefined, info: () => undefined, debug: () => undefined };
