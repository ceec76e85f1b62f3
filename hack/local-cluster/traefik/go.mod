// Module traefik pins the Traefik release that hack/local-cluster/addons.sh
// builds and runs as the local cluster's ingress controller. Traefik is built
// from a copy of this module's source (its own go.mod, go.sum and replace
// directives), with the few changes addons.sh lists, because its go.mod
// replaces modules (so `go build` cannot build it as a dependency) and the Go
// module proxy does not serve all of them.
module github.com/callguard/callguard/hack/local-cluster/traefik

go 1.26.0

require github.com/traefik/traefik/v3 v3.7.13
