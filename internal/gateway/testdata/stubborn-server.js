// A stdio MCP server that will not go: it ignores the end of its input
// and SIGTERM, and starts a process of its own. Its one tool, pids,
// answers with both process ids.
const { spawn } = require('child_process');
const child = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' });
process.on('SIGTERM', () => {});
setInterval(() => {}, 1000);
require('./lineserver').serve('stubborn', ['pids'], () => process.pid + ' ' + child.pid);
