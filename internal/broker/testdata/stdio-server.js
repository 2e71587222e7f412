// A minimal stdio MCP server for the broker's tests, raw JSON-RPC lines:
// each tool call answers with the server's process id. With the argument
// "linger" it does not exit when its input ends, as a server may not.
const rl = require('readline').createInterface({ input: process.stdin });
const send = (m) => process.stdout.write(JSON.stringify(m) + '\n');
rl.on('line', (line) => {
  let m;
  try { m = JSON.parse(line); } catch { return; }
  if (m.id === undefined) return;
  switch (m.method) {
    case 'initialize':
      return send({ jsonrpc: '2.0', id: m.id, result: { protocolVersion: m.params.protocolVersion, capabilities: { tools: {} }, serverInfo: { name: 'stub', version: '1' } } });
    case 'tools/list':
      return send({ jsonrpc: '2.0', id: m.id, result: { tools: [{ name: 'get_pages', inputSchema: { type: 'object' } }] } });
    case 'tools/call':
      return send({ jsonrpc: '2.0', id: m.id, result: { content: [{ type: 'text', text: 'pid ' + process.pid }] } });
    default:
      return send({ jsonrpc: '2.0', id: m.id, result: {} });
  }
});
if (process.argv[2] === 'linger') {
  setInterval(() => {}, 1000);
}
