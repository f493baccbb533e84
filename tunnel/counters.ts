// Counters of the data path: one field per event and per drop reason, so that every packet that
// does not make it is accounted for (ARCHITECTURE §5). Plain numbers: incremented on the hot path.

import { EspDrop } from '../protocol/esp.js';

export class EngineCounters {
  /** TUN → UDP */
  outPackets = 0;
  outBytes = 0;
  outDropNotIp = 0;
  outDropNoTunnel = 0;
  outDropNoEndpoint = 0;
  outDropSeqExhausted = 0;
  outDropSendFailed = 0;
  /** UDP → TUN */
  inPackets = 0;
  inBytes = 0;
  inKeepalives = 0;
  inControl = 0;
  inDropInvalid = 0;
  inDropUnknownSpi = 0;
  inDropTruncated = 0;
  inDropBadIcv = 0;
  inDropBadPadding = 0;
  inDropReplayed = 0;
  inDropTooOld = 0;
  inDropBadNextHeader = 0;
  inDropDummy = 0;
  inDropSpoofedSource = 0;
  inDropWriteFailed = 0;
  inEndpointUpdates = 0;

  countEspDrop(code: number): void {
    switch (code) {
      case EspDrop.truncated: this.inDropTruncated++; break;
      case EspDrop.badIcv: this.inDropBadIcv++; break;
      case EspDrop.badPadding: this.inDropBadPadding++; break;
      case EspDrop.replayed: this.inDropReplayed++; break;
      case EspDrop.tooOld: this.inDropTooOld++; break;
      case EspDrop.badNextHeader: this.inDropBadNextHeader++; break;
      case EspDrop.dummy: this.inDropDummy++; break;
      default: this.inDropUnknownSpi++;
    }
  }

  snapshot(): Record<string, number> {
    return Object.fromEntries(Object.entries(this)) as Record<string, number>;
  }
}
