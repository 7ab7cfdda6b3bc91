// Command edgectl is the fleet console and fleet server (keys, bundles, deployments). Its
// commands arrive with the bundle and fleet work; for now it reports its version.
package main

import (
	"fmt"
	"os"

	"github.com/edge-agent/edge-agent/agent"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "version" {
		fmt.Println("edgectl", agent.Version)
		return
	}
	fmt.Fprintln(os.Stderr, "edgectl: fleet commands are not part of this release yet; see docs/architecture.md")
	os.Exit(2)
}
