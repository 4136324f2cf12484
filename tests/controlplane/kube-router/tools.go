//go:build tools

// Package tools pins the command that build-kube-router.sh builds, so that `go mod tidy`
// keeps its dependencies. It is never compiled (the tools build tag is never set).
package tools

import (
	_ "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router"
)
