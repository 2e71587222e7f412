// The tests' small stdio MCP servers, one JSON-RPC message a line:
// serve(name, tools, call) answers initialize as name, tools/list with
// the tools named, tools/call with the text call(params) returns, and any
// other request with an empty result. It returns the line reader, whose
// 'close' is the end of the server's input.
exports.serve = (name, tools, call) => {
  const rl = require('readline').createInterface({ input: process.stdin });
  const send = (m) => process.stdout.write(JSON.stringify(m) + '\n');
  const result = (m) => {
    switch (m.method) {
      case 'initialize':
        return { protocolVersion: m.params.protocolVersion, capabilities: { tools: {} }, serverInfo: { name, version: '1' } };
      case 'tools/list':
        return { tools: tools.map((t) => ({ name: t, inputSchema: { type: 'object' } })) };
      case 'tools/call':
        return { content: [{ type: 'text', text: call(m.params) }] };
      default:
        return {};
    }
  };
  rl.on('line', (line) => {
    let m;
    try { m = JSON.parse(line); } catch { return; }
    if (m.id !== undefined) send({ jsonrpc: '2.0', id: m.id, result: result(m) });
  });
  return rl;
};
