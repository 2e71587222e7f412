// A stdio MCP server whose one tool, env, answers with its environment as
// a JSON object.
require('./lineserver').serve('env', ['env'], () => JSON.stringify(process.env));
