// Package scripts holds the shell scripts that prepare a machine for AMG's
// tests (setup, and the setup-* ones it runs). It has no code;
// setup_test.go runs setup with stand-ins for apt, Node.js and npm on PATH,
// as on the machines it is meant for, and checks what it installs.
package scripts
