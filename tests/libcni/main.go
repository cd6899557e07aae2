// Command libcni-driver runs CNI operations through libcni, the library
// containerd, CRI-O and cri-dockerd use to call plugins, so tests see exactly
// what those runtimes see: libcni builds each plugin's stdin (name,
// cniVersion, prevResult, runtimeConfig from capabilities), parses and
// converts every result, and caches the ADD result for CHECK and DEL.
//
// Built by the test suite in GOPATH mode against Debian's
// golang-github-appc-cni-dev (libcni v1.1.2, which has no STATUS or GC; tests
// exec the plugin directly for those).
//
// Output: on success, "add" prints the result JSON, "cached" the cached
// result, "version" the plugin's version info, "validate" the capability
// list; "check" and "del" print {}. On failure it prints
// {"error": "<libcni's message>", "code": <CNI code or 0>} on stdout, the
// message on stderr, and exits 1.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

type options struct {
	command        string
	conflist       string
	cniPath        string
	cacheDir       string
	containerID    string
	netns          string
	ifname         string
	args           string
	capabilityArgs string
	pluginType     string
	timeout        time.Duration
}

func parseFlags() (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("libcni-driver", flag.ContinueOnError)
	fs.StringVar(&o.command, "command", "", "add, check, del, cached, validate or version")
	fs.StringVar(&o.conflist, "conflist", "", "path of the network config list (.conflist JSON)")
	fs.StringVar(&o.cniPath, "cni-path", "", "plugin directories, separated by ':'")
	fs.StringVar(&o.cacheDir, "cache-dir", "", "libcni result cache dir (default /var/lib/cni is never used)")
	fs.StringVar(&o.containerID, "container-id", "", "CNI_CONTAINERID")
	fs.StringVar(&o.netns, "netns", "", "CNI_NETNS (a netns path)")
	fs.StringVar(&o.ifname, "ifname", "eth0", "CNI_IFNAME")
	fs.StringVar(&o.args, "args", "", "CNI_ARGS as K=V;K=V")
	fs.StringVar(&o.capabilityArgs, "capability-args", "", "JSON object of capability args, e.g. {\"portMappings\": [...]}")
	fs.StringVar(&o.pluginType, "plugin", "", "plugin type for -command version")
	fs.DurationVar(&o.timeout, "timeout", 60*time.Second, "overall timeout")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return nil, err
	}
	if o.command == "" {
		return nil, errors.New("-command is required")
	}
	if o.cniPath == "" {
		return nil, errors.New("-cni-path is required")
	}
	if o.command != "version" && o.conflist == "" {
		return nil, errors.New("-conflist is required")
	}
	if o.command == "version" && o.pluginType == "" {
		return nil, errors.New("-plugin is required for -command version")
	}
	if o.cacheDir == "" && o.command != "version" && o.command != "validate" {
		return nil, errors.New("-cache-dir is required (keeps tests out of /var/lib/cni)")
	}
	return o, nil
}

func parseArgs(text string) ([][2]string, error) {
	var out [][2]string
	for _, part := range strings.Split(text, ";") {
		if part == "" {
			continue
		}
		kv := strings.SplitN(part, "=", 2)
		if len(kv) != 2 {
			return nil, fmt.Errorf("bad -args entry %q (want K=V)", part)
		}
		out = append(out, [2]string{kv[0], kv[1]})
	}
	return out, nil
}

func runtimeConf(o *options) (*libcni.RuntimeConf, error) {
	args, err := parseArgs(o.args)
	if err != nil {
		return nil, err
	}
	rt := &libcni.RuntimeConf{
		ContainerID: o.containerID,
		NetNS:       o.netns,
		IfName:      o.ifname,
		Args:        args,
	}
	if o.capabilityArgs != "" {
		caps := map[string]interface{}{}
		if err := json.Unmarshal([]byte(o.capabilityArgs), &caps); err != nil {
			return nil, fmt.Errorf("bad -capability-args: %w", err)
		}
		rt.CapabilityArgs = caps
	}
	return rt, nil
}

// run performs one command and returns what to print on success.
func run(ctx context.Context, o *options) (interface{}, error) {
	cni := libcni.NewCNIConfigWithCacheDir(filepath.SplitList(o.cniPath), o.cacheDir, nil)
	if o.command == "version" {
		info, err := cni.GetVersionInfo(ctx, o.pluginType)
		if err != nil {
			return nil, err
		}
		return map[string]interface{}{"supportedVersions": info.SupportedVersions()}, nil
	}

	list, err := libcni.ConfListFromFile(o.conflist)
	if err != nil {
		return nil, err
	}
	rt, err := runtimeConf(o)
	if err != nil {
		return nil, err
	}

	switch o.command {
	case "add":
		return cni.AddNetworkList(ctx, list, rt)
	case "check":
		return struct{}{}, cni.CheckNetworkList(ctx, list, rt)
	case "del":
		return struct{}{}, cni.DelNetworkList(ctx, list, rt)
	case "cached":
		result, err := cni.GetNetworkListCachedResult(list, rt)
		if err == nil && result == nil {
			return nil, errors.New("no cached result")
		}
		return result, err
	case "validate":
		caps, err := cni.ValidateNetworkList(ctx, list)
		if caps == nil {
			caps = []string{}
		}
		return map[string]interface{}{"capabilities": caps}, err
	default:
		return nil, fmt.Errorf("unknown -command %q", o.command)
	}
}

func fail(err error) {
	code := uint(0)
	var cniErr *types.Error
	if errors.As(err, &cniErr) {
		code = cniErr.Code
	}
	out, _ := json.Marshal(map[string]interface{}{"error": err.Error(), "code": code})
	fmt.Println(string(out))
	fmt.Fprintln(os.Stderr, err.Error())
	os.Exit(1)
}

func main() {
	o, err := parseFlags()
	if err != nil {
		fail(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()

	value, err := run(ctx, o)
	if err != nil {
		fail(err)
	}
	out, err := json.Marshal(value)
	if err != nil {
		fail(fmt.Errorf("cannot encode output: %w", err))
	}
	fmt.Println(string(out))
}
