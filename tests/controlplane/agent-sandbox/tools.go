//go:build tools

// Package tools pins the command that build-agent-sandbox.sh builds, so that `go mod tidy`
// keeps its dependencies. It is never compiled (the tools build tag is never set).
package tools

import (
	_ "sigs.k8s.io/agent-sandbox/cmd/agent-sandbox-controller"
)
