// Package deploy holds the deployment files for AMG in Envoy mode: amg.yaml
// (amg's config for docker compose) and k8s/ (Kubernetes manifests). It has
// no code; deploy_test.go parses these files, docker-compose.yml, the
// Dockerfile and envoy/envoy.yaml, and checks that they agree with each
// other. Nothing is run in Docker or Kubernetes (see README.md).
package deploy
