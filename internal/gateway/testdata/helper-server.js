// A stdio MCP server that ends as it should, when its input ends, but
// starts a process of its own that does not. Its tool pids answers with
// both process ids; its tool exit ends the server at once.
const { spawn } = require('child_process');
const child = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' });
const rl = require('./lineserver').serve('helper', ['pids', 'exit'], (params) => {
  if (params.name === 'exit') process.exit(3);
  return process.pid + ' ' + child.pid;
});
rl.on('close', () => process.exit(0));
