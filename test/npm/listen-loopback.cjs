// Forces every TCP server the process starts onto 127.0.0.1, whatever
// host it asks for: listen(port[, host][, backlog][, cb]) or listen(options[, cb]).
const net = require('net');
const orig = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  const first = args[0];
  if (first !== null && typeof first === 'object' && first.path === undefined) {
    args[0] = { ...first, host: '127.0.0.1' };
  } else if (typeof first === 'number' || (typeof first === 'string' && /^\d+$/.test(first))) {
    const rest = args.slice(1);
    if (typeof rest[0] === 'string') rest.shift();
    args = [Number(first), '127.0.0.1', ...rest];
  }
  return orig.apply(this, args);
};
