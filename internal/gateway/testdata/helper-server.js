// A stdio MCP server that ends as it should, when its input ends, but
// starts a process of its own that does not. Its tool pids answers with
// both process ids; its tool exit ends the server at once.
const { spawn } = require('child_process');
const child = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' });
const rl = require('readline').createInterface({ input: process.stdin });
rl.on('close', () => process.exit(0));
const send = (m) => process.stdout.write(JSON.stringify(m) + '\n');
rl.on('line', (line) => {
  let m;
  try { m = JSON.parse(line); } catch { return; }
  if (m.id === undefined) return;
  switch (m.method) {
    case 'initialize':
      return send({ jsonrpc: '2.0', id: m.id, result: { protocolVersion: m.params.protocolVersion, capabilities: { tools: {} }, serverInfo: { name: 'helper', version: '1' } } });
    case 'tools/call':
      if (m.params.name === 'exit') return process.exit(3);
      return send({ jsonrpc: '2.0', id: m.id, result: { content: [{ type: 'text', text: process.pid + ' ' + child.pid }] } });
    default:
      return send({ jsonrpc: '2.0', id: m.id, result: {} });
  }
});
