//go:build tools

// Package tools pins ko, which builds the release's images from their Go
// mains, and crane from the go-containerregistry ko itself uses, which serves
// the throwaway registry ko builds against and assembles the base image
// (hack/release.sh). A module of its own so that its dependencies do not move
// the other tools'.
package tools

import (
	_ "github.com/google/go-containerregistry/cmd/crane"
	_ "github.com/google/ko"
)
