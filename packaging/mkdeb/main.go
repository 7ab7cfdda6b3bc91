// Command mkdeb builds the edge-agent .deb packages from the layout `make cross` writes
// (dist/linux-<arch>/): `make deb` runs it. See packaging/README.md.
//
//	go run ./packaging/mkdeb --version v1.4.0 [--arch amd64,arm64] [--dist dist] [--out dist]
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/edge-agent/edge-agent/packaging"
)

func main() {
	version := flag.String("version", "", "the version the binaries report (git describe); required")
	arch := flag.String("arch", "amd64,arm64", "architectures, comma-separated")
	dist := flag.String("dist", "dist", "folder holding linux-<arch>/ layouts")
	out := flag.String("out", "", "folder the packages are written to (default: --dist)")
	root := flag.String("root", ".", "repository root")
	maintainer := flag.String("maintainer", packaging.DefaultMaintainer, `the Maintainer field, "Name <email>"`)
	flag.Parse()
	if *version == "" || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "mkdeb: --version is required, and nothing else")
		flag.Usage()
		os.Exit(2)
	}
	if *out == "" {
		*out = *dist
	}
	for _, a := range strings.Split(*arch, ",") {
		p, err := packaging.Build(packaging.Options{
			Root: *root, Dist: filepath.Join(*dist, "linux-"+a), Arch: a,
			Version: *version, Out: *out, Maintainer: *maintainer,
		})
		if err != nil {
			fmt.Fprintf(os.Stderr, "mkdeb: %v\n", err)
			os.Exit(1)
		}
		fmt.Println(p)
	}
}
