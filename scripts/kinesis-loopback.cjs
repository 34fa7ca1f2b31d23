// Preloaded into kinesis-local by scripts/emulators.sh (`node --require`).
//
// kinesis-local 0.6.2 hard-codes its listen address to 0.0.0.0 (see
// KinesisMockService in its main.js: `Host.fromString("0.0.0.0")`, which its
// Node socket layer turns into `server.listen(port)`, i.e. every interface,
// IPv4 and IPv6). It has no setting for the host: only the ports
// (KINESIS_MOCK_PLAIN_PORT, KINESIS_MOCK_TLS_PORT) can be chosen.
//
// This preload makes every TCP server in the process listen on 127.0.0.1
// instead whenever it asks for a wildcard address, so the emulator is reachable
// from this machine only.
'use strict';

const net = require('net');

const LOOPBACK = '127.0.0.1';
const WILDCARDS = new Set(['', '0.0.0.0', '::', '[::]', '::0']);

const isPort = (v) => typeof v === 'number' || (typeof v === 'string' && /^\d+$/.test(v));
const isWildcard = (h) => h === undefined || h === null || WILDCARDS.has(String(h));

const originalListen = net.Server.prototype.listen;

net.Server.prototype.listen = function listenOnLoopback(...args) {
  if (isPort(args[0])) {
    // listen(port[, host][, backlog][, callback])
    if (typeof args[1] === 'string' || args[1] === undefined || args[1] === null) {
      if (isWildcard(args[1])) args[1] = LOOPBACK;
    } else {
      args.splice(1, 0, LOOPBACK);
    }
  } else if (args[0] && typeof args[0] === 'object' && !(args[0] instanceof net.Server) &&
             args[0].port !== undefined && args[0].path === undefined && isWildcard(args[0].host)) {
    // listen(options[, callback])
    args[0] = { ...args[0], host: LOOPBACK };
  }
  return originalListen.apply(this, args);
};
