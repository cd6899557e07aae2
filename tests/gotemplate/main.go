// Command render-cni-template renders a CNI conf_template the way containerd's
// CRI does (pkg/cri/server, UpdateRuntimeConfig): Go's text/template, parsed
// with no extra functions, executed on a struct with the fields PodCIDR,
// PodCIDRRanges and Routes. Used by the tests because no containerd CRI test
// helper is on main yet.
//
// Usage: render-cni-template TEMPLATE DATA.json > rendered.conflist
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"text/template"
)

// The same shape as containerd's cniConfigTemplate.
type cniConfigTemplate struct {
	PodCIDR       string
	PodCIDRRanges []string
	Routes        []string
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: render-cni-template TEMPLATE DATA.json")
		os.Exit(2)
	}
	text, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	raw, err := os.ReadFile(os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var data cniConfigTemplate
	if err := json.Unmarshal(raw, &data); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	t, err := template.New("cni-config-template").Parse(string(text))
	if err != nil {
		fmt.Fprintln(os.Stderr, "parse:", err)
		os.Exit(1)
	}
	if err := t.Execute(os.Stdout, data); err != nil {
		fmt.Fprintln(os.Stderr, "execute:", err)
		os.Exit(1)
	}
}
